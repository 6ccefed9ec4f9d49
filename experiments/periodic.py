"""Periodic Hamiltonians and bands (graphene, h-BN, diamond).

The command-line handle of ``helm_jax/configs/periodic.py`` (settings, variants and usage are
documented there): ``python experiments/run.py --config=experiments/periodic.py[:variant]``.
"""

from helm_jax.configs.periodic import get_config  # noqa: F401
