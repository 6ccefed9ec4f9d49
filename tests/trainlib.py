"""Shared fixtures for training tests: a small labelled dataset and tiny configs."""

import os

import numpy as np

from helm_jax.configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WATER_XYZ = os.path.join(ROOT, "tests", "data", "water_frames.xyz")


def label_water(out: str) -> str:
    """HF/def2-SVP labels (Fock, energy, forces) of the 8 water fixture frames."""
    from helm_jax.data import labelling
    if not os.path.exists(out):
        labelling.label_file(WATER_XYZ, out, labelling.LevelOfTheory(method="HF",
                                                                     basis="def2-svp"),
                             forces=True, progress=False)
    return out


def label_water_qm(out: str) -> str:
    """HF/def2-SVP labels of the water frames with AO dipole integrals, reference targets and
    def2-TZVP targets (``label.py --dipole --targets_basis=def2-tzvp``)."""
    from helm_jax.data import labelling
    if not os.path.exists(out):
        labelling.label_file(WATER_XYZ, out, labelling.LevelOfTheory(method="HF",
                                                                     basis="def2-svp"),
                             progress=False, props=labelling.Properties(
                                 dipole=True, targets_basis="def2-tzvp"))
    return out


def tiny_config(data_path: str, steps: int = 4):
    """A tiny Hamiltonian run on ``data_path`` (fast to compile on CPU)."""
    c = base.get_config()
    base.tiny_model(c, l_max=4)
    c.model.update(channels=8, num_layers=1, num_rbf=8, edge_channels_hidden=8,
                   ffn_channels=8, cutoff=5.0)
    c.heads.update(hidden=8, energy_hidden=8)
    c.data.path = data_path
    c.data.split.update(train=5, val=2, test=None)
    c.data.batch.molecules_per_batch = 2
    c.data.batch.num_buckets = 1
    c.data.prefetch = 0
    c.train.update(num_steps=steps, log_every=1, eval_every=1000, checkpoint_every=1000)
    return c


def final_params(workdir: str):
    from helm_jax import checkpoint
    return checkpoint.load_model(workdir, which="latest").params


def max_diff(a, b) -> float:
    import jax
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
