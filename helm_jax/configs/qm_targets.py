"""Training against quantum-chemistry targets of the predicted H (helm_jax/orbitals.py).

Orbital energies, HOMO-LUMO gap, dipole and polarisability are computed from the predicted
full H inside the jitted step (docs/qm_targets.md). Data: rMD17 ethanol at
PBE/def2-SVP with AO dipole integrals, same-basis reference targets and def2-TZVP targets:

    python data_prep/label.py --input=/work/shared/data/rmd17/ethanol_train_01.xyz \
        --out=data/ethanol_qm_pbe_svp.h5 --xc=pbe --basis=def2-svp --dipole \
        --targets_basis=def2-tzvp --limit=100
    python experiments/run.py --config=experiments/qm_targets.py:h_only
    python experiments/run.py --config=experiments/qm_targets.py:h_orbital_dipole
    python experiments/run.py --config=experiments/qm_targets.py:reduced_basis

Variants (same model, data split and number of steps):
  h_only: the Hamiltonian loss alone; the quantum-chemistry errors are still reported.
  h_orbital_dipole: + occupied and 4 lowest virtual orbital energies + dipole.
  reduced_basis: a def2-SVP Hamiltonian trained to reproduce the def2-TZVP orbital
    energies, dipole and (non-self-consistent) polarisability, with the def2-SVP Fock
    matrix as a weak prior; errors are reported against the def2-TZVP targets.
  small: add ``,small`` for a quick CPU run.
"""

from helm_jax.configs import base, parse_variant

VARIANTS = ("h_only", "h_orbital_dipole", "reduced_basis")


def get_config(variant: str = "h_only"):
    """Ethanol PBE/def2-SVP, l_max=4, cutoff 5 A (every atom pair), float64, 5 molecules per
    batch, 70/10/20 split."""
    v = parse_variant(variant, groups={"targets": VARIANTS}, flags=("small",),
                      config="qm_targets")
    name, flags = v.choice["targets"], v.flags
    c = base.get_config()
    c.name = f"qm_{name}"
    c.model.update(channels=64, num_layers=2, l_max=4, m_max=2, num_rbf=32, cutoff=5.0,
                   edge_channels_hidden=64, ffn_channels=64, dtype="float64",
                   param_dtype="float64")
    c.heads.update(hidden=64, energy_hidden=32)
    c.data.path = "data/ethanol_qm_pbe_svp.h5"
    c.data.split.update(train=70, val=10, test=None)
    c.data.batch.molecules_per_batch = 5
    c.data.batch.num_buckets = 1
    c.qm.update(enabled=True, n_virtual=4)
    c.optim.update(name="adam", learning_rate=1e-3, weight_decay=0.0, schedule="cosine",
                   warmup_steps=30, final_lr_fraction=0.01)
    c.train.update(num_steps=300, eval_every=150, checkpoint_every=150, log_every=25)
    if name == "h_orbital_dipole":
        c.losses.update(orbital_energies=100.0, dipole=10.0)
    if name == "reduced_basis":
        c.qm.targets = "large_basis"
        c.losses.update(hamiltonian=0.1, orbital_energies=100.0, dipole=10.0,
                        polarizability=0.01)
    if "small" in flags:
        c.name += "_small"
        base.tiny_model(c, l_max=4)
        c.model.update(num_layers=1, cutoff=5.0)
        c.data.split.update(train=6, val=2, test=None)
        c.data.batch.molecules_per_batch = 2
        c.train.update(num_steps=10, eval_every=5, checkpoint_every=5, log_every=5)
    return c
