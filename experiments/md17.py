"""MD17 (PBE/def2-SVP): Hamiltonian pretraining and energy transfer per molecule.

The command-line handle of ``helm_jax/configs/md17.py`` (settings, variants and usage are
documented there): ``python experiments/run.py --config=experiments/md17.py[:variant]``.
"""

from helm_jax.configs.md17 import get_config  # noqa: F401
