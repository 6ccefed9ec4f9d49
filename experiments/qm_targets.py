"""Training against quantum-chemistry targets of the predicted H (helm_jax/orbitals.py).

The command-line handle of ``helm_jax/configs/qm_targets.py`` (settings, variants and usage are
documented there): ``python experiments/run.py --config=experiments/qm_targets.py[:variant]``.
"""

from helm_jax.configs.qm_targets import get_config  # noqa: F401
