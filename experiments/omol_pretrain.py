"""Hamiltonian pretraining with the paper's OMol_CSH settings (HELM, arXiv 2510.00224;
docs/model_and_training.md).

The command-line handle of ``helm_jax/configs/omol_pretrain.py`` (settings, variants and usage are
documented there): ``python experiments/run.py --config=experiments/omol_pretrain.py[:variant]``.
"""

from helm_jax.configs.omol_pretrain import get_config  # noqa: F401
