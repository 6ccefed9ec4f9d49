"""The shared base of every experiment config; the other configs override a few fields.

Every field used anywhere in helm_jax is listed here with its meaning, so
``--config.<field>=...`` overrides (checked by ``lock_config=True``) are discoverable.
"""

import ml_collections

from helm_jax import orbitals


def model_config() -> ml_collections.ConfigDict:
    """``config.model``: the backbone (fields of helm_jax.model.backbone.HELMBackbone); these
    are the OMol_CSH settings of the paper."""
    return ml_collections.ConfigDict(dict(
        channels=128,  # C: channels per (l, m) coefficient
        num_layers=3,
        l_max=6,
        m_max=6,
        num_rbf=128,  # Gaussians on [0, cutoff]
        rbf_width=1.0,  # their sigma in units of the spacing cutoff / (num_rbf - 1)
        # Initial std of the element embeddings in x_edge beside the radial basis: small, so
        # that distances drive the radial MLPs from the first step (at 1.0 the embeddings
        # held about 98% of x_edge's variance; docs/learning_efficiency.md).
        edge_embedding_std=1e-3,
        cutoff=12.0,  # Angstrom; graph cutoff and radial envelope
        num_elements=100,  # embedding table size (species index = atomic number)
        edge_channels_hidden=128,  # element embeddings in x_edge and radial-MLP width
        ffn_channels=128,  # hidden channels of the feed-forward blocks
        avg_degree=5.0,  # edge sums are divided by this
        dtype="float32",  # compute dtype ("float64" needs jax_enable_x64)
        param_dtype="float32",
        # e.g. "bfloat16": matmul inputs in bf16, results cast to dtype; None: dtype.
        matmul_dtype=ml_collections.FieldReference(None, field_type=str),
        remat=False,  # rematerialise each layer in the backward pass
        # Edge-chunked message passing (bounded memory on large graphs): when a batch has
        # more than chunk_edges_above edges, messages are computed edge_chunk_size edges at
        # a time (a scan; node sums accumulated with segment_sum, each chunk rematerialised
        # in the backward pass), so activation memory no longer grows with E x (l_max+1)^2
        # x C per intermediate. 0 disables chunking. Same parameters, same outputs.
        edge_chunk_size=2048,
        chunk_edges_above=2048,
        # Learned embeddings of the total charge and of 2S = n_alpha - n_beta added to the
        # l = 0 initial node features (helm_jax/model/backbone.py; charges -10..10, 2S
        # 0..10). Needed for open-shell data; False keeps the parameters and outputs of
        # models without it. docs/model_and_training.md, "Open shells".
        charge_spin_embedding=False,
        # Variance factor of every fan-in-initialised weight matrix (helm_jax.model.helm.
        # scale_initial_weights): 1/3 is PyTorch's default nn.Linear variance, as in the
        # HELM reference; docs/learning_efficiency.md.
        init_scale=1.0))


def heads_config() -> ml_collections.ConfigDict:
    """``config.heads``: the Hamiltonian and energy heads (helm_jax.model.heads, .energy)."""
    # label_scale: the Hamiltonian head's output unit, from the training labels: "rms"
    # (their root mean square), "rms_per_degree" (per degree l, nodes and edges apart) or
    # "none" (Eh); see helm_jax/data/statistics.py and docs/learning_efficiency.md.
    # reduced_nodes: predict only the node blocks' independent irreps.
    # spin: "none" (one restricted H), "alpha_beta" (separate alpha and beta heads) or
    # "sum_diff" (a spin-averaged part A and a spin difference D: alpha = A + D, beta = A - D);
    # closed shells get alpha = beta exactly (helm_jax/model/heads.py).
    return ml_collections.ConfigDict(dict(hidden=128, energy_hidden=128, reduced_nodes=True,
                                          label_scale="rms", spin="none"))


def get_config() -> ml_collections.ConfigDict:
    """Returns the base configuration (a Hamiltonian run on the embedded dataset)."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.num_devices = ml_collections.FieldReference(None, field_type=int)  # None: all devices
    # Graph parallelism (docs/graph_parallel.md): each structure split over graph_devices
    # devices (a ('data', 'graph') mesh; the other devices stay data parallel). 1: off.
    # partitioner: "bisect" (coordinate bisection) or "metis" (pymetis; smaller halos).
    c.parallel = ml_collections.ConfigDict(dict(graph_devices=1, partitioner="bisect"))

    c.data = ml_collections.ConfigDict()
    c.data.path = "embedded"  # a dataset file (see helm_jax/data/readers/) or "embedded"
    c.data.kind = ml_collections.FieldReference(None, field_type=str)  # None: detect
    c.data.elements = ml_collections.FieldReference(None, field_type=list)  # None: scan
    c.data.embedded_limit = ml_collections.FieldReference(None, field_type=int)
    # With path "embedded": also the open-shell and charged species (radicals labelled UKS).
    c.data.embedded_open_shell = False
    # Periodic structures (docs/periodic.md): edges to every periodic image within the
    # cutoff; band_targets adds the bands on the labels' k-mesh (band losses and metrics)
    # with conduction_bands bands above the occupied ones.
    c.data.periodic = False
    c.data.embedded_periodic = ""  # with path "embedded": graphene | hbn | diamond | small
    c.data.band_targets = False
    c.data.conduction_bands = 2
    c.data.fermi_reference = False  # periodic: learn H - mu S (bands relative to E_F)
    # Keyword options of the reader (e.g. basis="gth-dzvp" for the DeepH and CP2K readers).
    c.data.reader_options = ml_collections.ConfigDict()
    c.data.split_seed = 0
    # l = 0 node labels minus the per-element mean ("shift") or also divided by its standard
    # deviation ("standardize", the paper's form); see helm_jax/data/statistics.py.
    c.data.node_reference = "shift"
    c.data.split_order = "random"  # or "contiguous": file order (train first, then val, test)
    c.data.split = ml_collections.ConfigDict(dict(train=0.8, val=0.1, test=None))
    c.data.batch = ml_collections.ConfigDict(dict(
        molecules_per_batch=ml_collections.FieldReference(4, field_type=int),
        edges_per_batch=ml_collections.FieldReference(None, field_type=int),
        num_buckets=3))
    c.data.cache_graphs = True
    c.data.prefetch = 2

    c.model = model_config()
    c.heads = heads_config()

    c.losses = ml_collections.ConfigDict(dict(hamiltonian=1.0, energy=0.0, forces=0.0))
    # Modules searched (after helm_jax.losses) for loss names: a fork's own losses.
    c.loss_modules = ()

    # Quantum-chemistry targets of the predicted H (helm_jax/orbitals.py; losses orbital_energies,
    # gap, dipole, polarizability): enabled adds the labels (data from label.py --dipole);
    # targets: "reference" (same basis) or "large_basis" (label.py --targets_basis);
    # n_virtual: virtual orbitals after the occupied ones in the orbital-energy loss;
    # s_threshold: overlap eigenvalues at or below it are dropped (linear dependence).
    c.qm = ml_collections.ConfigDict(dict(
        enabled=False, targets="reference", self_consistent_polarizability=False,
        n_virtual=0, s_threshold=orbitals.S_THRESHOLD))

    # schedule: constant | cosine (warmup_steps, final_lr_fraction) | plateau
    # (optax.contrib.reduce_on_plateau: the rate is multiplied by plateau_factor after
    # plateau_patience evaluations without a relative improvement of plateau_rtol).
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, beta1=0.9, beta2=0.999, weight_decay=1e-4,
        schedule="plateau",
        warmup_steps=0, final_lr_fraction=0.01, plateau_factor=0.5, plateau_patience=10,
        plateau_rtol=1e-4, clip_norm=10.0, ema_decay=0.0, backbone_lr_scale=1.0))

    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, log_every=10, eval_every=200, checkpoint_every=200,
        keep_checkpoints=2,
        # Stop when the validation loss has not improved on its best for this many
        # evaluations (0: train all num_steps); resumes count from metrics.jsonl.
        early_stop_patience=0,
        max_eval_molecules=ml_collections.FieldReference(None, field_type=int),
        # Resume a workdir with settings that change results (helm_jax/rundir.py).
        allow_config_change=False))

    # direct | frozen | finetune (energy transfer); "none" for Hamiltonian pretraining.
    c.transfer = ml_collections.ConfigDict(dict(protocol="none", init_from=""))
    return c


def tiny_model(c: ml_collections.ConfigDict, l_max: int) -> None:
    """Shrinks the model for quick CPU runs and tests (in place)."""
    c.model.update(channels=16, num_layers=2, l_max=l_max, m_max=min(l_max, 2), num_rbf=16,
                   edge_channels_hidden=16, ffn_channels=16)
    c.heads.update(hidden=32, energy_hidden=32)


def small_variant(c: ml_collections.ConfigDict, l_max: int, steps: int) -> None:
    """The ``small`` variant of a config: tiny float32 model, few steps (in place)."""
    c.name += "_small"
    tiny_model(c, l_max=l_max)
    c.model.update(dtype="float32", param_dtype="float32")
    c.data.split.update(train=0.6, val=0.2, test=None)
    c.train.update(num_steps=steps, eval_every=steps // 2, checkpoint_every=steps // 2,
                   log_every=5)


def md17_model(c: ml_collections.ConfigDict) -> None:
    """The paper's MD17/def2-SVP model: l_max=m_max=4, 128 Gaussians on 0-16 A, cutoff 16 A."""
    c.model.update(channels=128, num_layers=3, l_max=4, m_max=4, num_rbf=128, cutoff=16.0)
