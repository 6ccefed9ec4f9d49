"""MD17 (PBE/def2-SVP): Hamiltonian pretraining and energy transfer per molecule.

Hamiltonian pretraining on Fock matrices labelled from rMD17 geometries by the project's
labeller (or on a SchNOrb MD17 db via --config.data.path=...):

    python data_prep/label.py --input=rmd17/ethanol_train_01.xyz \
        --out=data/ethanol_train_pbe_svp.h5 --xc=pbe --basis=def2-svp --limit=500 --workers=2
    python experiments/run.py --config=experiments/md17.py:ethanol

Energy transfer on rMD17's own (ORCA) energies and forces with K training conformers:

    python experiments/run.py --config=experiments/md17.py:ethanol,energy,frozen,k=100 \
        --config.transfer.init_from=workdirs/md17_ethanol

Variants: a molecule (ethanol, malonaldehyde, uracil), ``energy`` with a protocol (direct,
frozen, finetune) and ``k=K``, ``small`` for a quick CPU run, ``float32``, ``study`` for the
CPU-sized model and budgets of the pretraining study (``experiments/rmd17_study.py``),
``curve`` for the learning-curve setting (``benchmarks/learning_curve.py``), ``converge``
for Hamiltonian training to convergence on a CPU (docs/rmd17_convergence.md).
"""

from helm_jax.configs import base, energy_transfer, parse_variant

MOLECULES = ("ethanol", "malonaldehyde", "uracil")


def get_config(variant: str = "ethanol"):
    """Paper MD17 settings: C=128, 3 layers, l_max=4, cutoff 16 A, float64, Adam 5e-4,
    plateau; 5 molecules per batch."""
    v = parse_variant(variant, groups={"molecule": MOLECULES,
                                       "protocol": energy_transfer.PROTOCOLS},
                      flags=("energy", "small", "float32", "study", "curve", "converge"),
                      keys={"k": (int, 100)}, config="md17")
    mol, flags = v.choice["molecule"], v.flags
    small = "small" in flags
    if "energy" not in flags and v.named & {"protocol", "k"}:
        raise ValueError(f"md17: {variant!r} names a protocol or k without 'energy'.")
    c = base.get_config()
    c.name = f"md17_{mol}"
    base.md17_model(c)
    c.model.update(dtype="float32" if "float32" in flags else "float64",
                   param_dtype="float32" if "float32" in flags else "float64")
    c.optim.update(name="adam", learning_rate=5e-4, schedule="plateau", plateau_patience=10,
                   weight_decay=0.0)
    c.data.path = f"data/{mol}_train_pbe_svp.h5"
    c.data.batch.molecules_per_batch = 5
    c.data.batch.num_buckets = 1
    c.data.split.update(train=0.9, val=0.1, test=None)
    c.train.update(num_steps=20000, eval_every=500, checkpoint_every=500, log_every=50)
    if "energy" in flags:
        protocol, k = v.choice["protocol"], v.values["k"]
        c.name = f"md17_{mol}_{protocol}_k{k}"
        energy_transfer.apply_protocol(c, protocol)
        c.losses.forces = 1.0  # rMD17 has forces; energy and force errors are both reported
        c.data.path = f"data/rmd17/{mol}_train_01.xyz"
        c.data.split.update(train=k, val=max(5, k // 10), test=None)
        c.train.update(num_steps=3000, eval_every=250, checkpoint_every=250, log_every=50)
    if "study" in flags:
        study_variant(c, energy="energy" in flags)
    if "curve" in flags:
        curve_variant(c)
    if "converge" in flags:
        converge_variant(c)
    if small:
        base.small_variant(c, l_max=4, steps=20)
    return c


def curve_variant(c) -> None:
    """The learning-curve setting of ``benchmarks/learning_curve.py`` (in place).

    The setting the PyTorch reference was compared on (docs/learning_efficiency.md): frames
    0-249 of the labelled file train, 250-299 validate; C=32, 2 layers, l_max = m_max = 4,
    16 radial Gaussians, cutoff 8 A, float32, full node blocks; batch 5, Adam at a constant
    1e-3 with no clipping, EMA or weight decay.
    """
    c.name += "_curve"
    c.model.update(channels=32, num_layers=2, l_max=4, m_max=4, num_rbf=16, cutoff=8.0,
                   edge_channels_hidden=32, ffn_channels=32, dtype="float32",
                   param_dtype="float32")
    c.heads.update(hidden=32, energy_hidden=32, reduced_nodes=False)
    c.optim.update(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0,
                   weight_decay=0.0, clip_norm=0.0, ema_decay=0.0)
    c.data.split.update(train=250, val=50, test=0)
    c.data.split_order = "contiguous"
    c.train.update(num_steps=100000, eval_every=500, checkpoint_every=100000, log_every=100)


def converge_variant(c) -> None:
    """Hamiltonian training to convergence on one molecule on a CPU (in place).

    docs/rmd17_convergence.md: 900 training / 100 validation conformers (random split of
    the labelled file; the test conformers come from a separate file, evaluated with
    ``experiments/evaluate.py --data=...``). The learning-curve model (C=32, 2 layers,
    l_max = m_max = 4, 16 radial Gaussians, cutoff 8 A, float32) with initial weights at
    a third of the fan-in variance (``init_scale``), chosen for accuracy per CPU-hour by
    the sweep in the docs; batch 5, Adam 1e-3 decayed on a cosine to 1e-5 over
    ``train.num_steps`` (40,000: about 50 minutes of a 2-core CPU; a longer budget is
    ``--config.train.num_steps=N``, which stretches the whole schedule); EMA 0.999 of the
    parameters for validation and checkpoints; the last 64 checkpoints (21 MiB each) are
    kept for the test curve of ``experiments/convergence_report.py --test_data``. The run
    resumes from its workdir with the same command (SIGTERM saves). For open-ended runs,
    ``--config.optim.schedule=plateau`` halves the rate after 5 validations (every 1,000
    steps) without a 0.1 % improvement.
    """
    curve_variant(c)
    c.name = c.name.replace("_curve", "_converge")
    c.model.init_scale = 1 / 3
    c.optim.update(schedule="cosine", warmup_steps=0, final_lr_fraction=0.01,
                   plateau_factor=0.5, plateau_patience=5, plateau_rtol=1e-3, ema_decay=0.999)
    c.data.split.update(train=900, val=100, test=0)
    c.data.split_order = "random"
    c.train.update(num_steps=40_000, eval_every=1000, checkpoint_every=1000, log_every=100,
                   keep_checkpoints=64)


def study_variant(c, energy: bool) -> None:
    """The rMD17 pretraining study's settings (in place), identical for every protocol.

    Sized so that one molecule's 36 energy runs fit in about an hour of a 2-core CPU.
    Model: C=32, 2 layers, l_max=4 (the smallest that spans def2-SVP's d-d blocks), m_max=2,
    16 radial Gaussians, cutoff 8 A (every atom pair of these molecules), float32.
    Hamiltonian pretraining: 1,500 Adam steps of 5 molecules on 450 labelled conformers
    (50 for validation), cosine 1e-3 -> 1e-5. Energy runs: 250 Adam steps of 5 molecules
    (cosine 1e-3 -> 1e-5, 25 warm-up steps), loss E + F (per-atom force MSE weighted 1),
    finetune backbone at 0.1x the learning rate; no test split inside the run (the study
    evaluates on rMD17's test file).
    """
    c.model.update(channels=32, num_layers=2, l_max=4, m_max=2, num_rbf=16, cutoff=8.0,
                   edge_channels_hidden=32, ffn_channels=32, dtype="float32",
                   param_dtype="float32")
    c.heads.update(hidden=32, energy_hidden=32)
    c.optim.update(name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=25,
                   final_lr_fraction=0.01, weight_decay=0.0)
    if energy:
        c.train.update(num_steps=250, eval_every=50, checkpoint_every=50, log_every=50)
        c.data.split.test = 0
    else:
        c.data.split.update(train=450, val=50, test=0)
        c.train.update(num_steps=1500, eval_every=250, checkpoint_every=250, log_every=50)
