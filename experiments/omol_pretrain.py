"""Hamiltonian pretraining with the paper's OMol_CSH settings (DESIGN.md section 1).

Until the data and training issues land this holds the model and basis settings only.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the OMol pretraining configuration."""
    config = ml_collections.ConfigDict()
    config.name = "omol_pretrain"
    config.basis = ml_collections.ConfigDict(
        dict(name="def2-tzvpd", ecp="def2-tzvpd"))
    config.model = ml_collections.ConfigDict(
        dict(channels=128, num_layers=3, l_max=6, m_max=6, num_rbf=128, cutoff=12.0))
    return config
