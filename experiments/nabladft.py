"""nablaDFT Hamiltonian runs (omega-B97X-D/def2-SVP, Psi4 order) on the 2k/5k/10k splits.

The command-line handle of ``helm_jax/configs/nabladft.py`` (settings, variants and usage are
documented there): ``python experiments/run.py --config=experiments/nabladft.py[:variant]``.
"""

from helm_jax.configs.nabladft import get_config  # noqa: F401
