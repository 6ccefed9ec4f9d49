"""Hamiltonian pretraining with the paper's OMol_CSH settings (HELM, arXiv 2510.00224;
docs/model_and_training.md).

    python experiments/run.py --config=experiments/omol_pretrain.py
    python experiments/run.py --config=experiments/omol_pretrain.py:small   # quick CPU run
    python benchmarks/learning_curve.py --config=experiments/omol_pretrain.py:curve  # curves
    python experiments/run.py --config=experiments/omol_pretrain.py:open_shell  # + radicals, ions
    python experiments/run.py --config=experiments/omol_pretrain.py \
        --config.data.path=/data/omol_csh_58k_train.h5 --config.data.batch.molecules_per_batch=None \
        --config.data.batch.edges_per_batch=18000

The data path defaults to the embedded dataset (labelled on first use), so the command runs
on a fresh machine.
"""

from helm_jax.configs import base, parse_variant


def get_config(variant: str = ""):
    """OMol settings: C=128, 3 layers, l_max=m_max=6, 128 Gaussians on 0-12 A, cutoff 12 A,
    float32, AdamW lr 1e-3 wd 1e-4, reduce-on-plateau x0.5 patience 10."""
    v = parse_variant(variant, flags=("small", "curve", "open_shell"), config="omol_pretrain")
    c = base.get_config()
    c.name = "omol_pretrain"
    c.model.update(channels=128, num_layers=3, l_max=6, m_max=6, num_rbf=128, cutoff=12.0,
                   dtype="float32")
    c.optim.update(name="adamw", learning_rate=1e-3, weight_decay=1e-4, schedule="plateau",
                   plateau_factor=0.5, plateau_patience=10)
    # The embedded molecules (3-9 atoms) are alike in size: one bucket, one compiled shape.
    c.data.batch.num_buckets = 1
    c.train.update(num_steps=500, eval_every=100, checkpoint_every=100, log_every=10)
    if "small" in v:
        c.name = "omol_pretrain_small"
        base.tiny_model(c, l_max=6)
        c.data.embedded_limit = 40
        c.train.update(num_steps=60, eval_every=30, checkpoint_every=30, log_every=10)
    if "curve" in v:
        curve_variant(c)
    if "open_shell" in v:
        open_shell_variant(c, small="small" in v)
    return c


def open_shell_variant(c, small: bool = False) -> None:
    """Open shells and charges (in place): the embedded set plus its radicals, radical ions
    and closed-shell ions (UKS labels where 2S > 0), charge and 2S embeddings, and the
    spin-sum / spin-difference Hamiltonian head (docs/open_shells.md). Unless ``small``, the
    model is the learning-curve size (C = 32, 2 layers, l_max 6, m_max 2) trained for 600
    steps with a cosine decay (about 22 min on a shared 2-core CPU); scale it with
    ``--config.model.*`` overrides."""
    c.name += "_open_shell"
    c.data.embedded_open_shell = True
    c.model.charge_spin_embedding = True
    c.heads.spin = "sum_diff"
    if small:
        return
    c.model.update(channels=32, num_layers=2, l_max=6, m_max=2, num_rbf=16, cutoff=12.0,
                   edge_channels_hidden=32, ffn_channels=32)
    c.heads.update(hidden=32, energy_hidden=32)
    c.optim.update(name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=100,
                   weight_decay=0.0)
    c.train.update(num_steps=600, eval_every=200, checkpoint_every=200, log_every=50)


def curve_variant(c) -> None:
    """The learning-curve setting on the embedded set (``benchmarks/learning_curve.py``; in
    place): the md17 ``curve`` model and optimiser at l_max 6 (def2-TZVPD has f-f blocks),
    m_max 2, cutoff 12 A; 4 molecules per batch; the 80/10/10 seeded split."""
    c.name += "_curve"
    c.model.update(channels=32, num_layers=2, l_max=6, m_max=2, num_rbf=16, cutoff=12.0,
                   edge_channels_hidden=32, ffn_channels=32, dtype="float32",
                   param_dtype="float32")
    c.heads.update(hidden=32, energy_hidden=32)
    c.optim.update(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0,
                   weight_decay=0.0, clip_norm=0.0, ema_decay=0.0)
    c.data.split.update(train=0.8, val=0.1, test=0.1)
    c.train.update(num_steps=100000, eval_every=500, checkpoint_every=100000, log_every=100)
