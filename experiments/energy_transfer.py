"""Energy (and force) transfer runs: direct, pretrained-frozen, finetuned.

The command-line handle of ``helm_jax/configs/energy_transfer.py`` (settings, variants and usage are
documented there): ``python experiments/run.py --config=experiments/energy_transfer.py[:variant]``.
"""

from helm_jax.configs.energy_transfer import get_config  # noqa: F401
