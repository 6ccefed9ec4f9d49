"""Per-element statistics from the training split: node-label references and energy reference.

* Node labels: each l = 0 component k of an atom's diagonal-block irreps is referenced to
  its per-element training mean, ``y - mu[Z, k]`` (``node_reference="shift"``, the default),
  or standardised as ``(y - mu[Z, k]) / sigma[Z, k]`` (``"standardize"``, sigma < 1e-4 -> 1,
  the paper's form). Without a reference, heavy elements' core-like diagonal entries (tens of
  Eh) dominate every loss. Dividing by sigma gives components that barely vary over the
  training set (core-like terms of one molecule's conformers, sigma ~ 1e-3 Eh) 50-1000x the
  weight of the off-diagonal blocks that make up most of H, which slows learning 2-3x on
  conformer datasets (docs/learning_efficiency.md); ``sigma`` is then stored as 1.
* Energies: a per-element linear reference ``E_ref = sum_i w[Z_i]`` fitted by least squares
  of the total energy on element counts; models fit ``E - E_ref``.

Statistics are computed from training graphs only, saved as JSON next to the dataset cache
and inside checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable

import numpy as np

from helm_jax import blocks
from helm_jax.data.graphs import MolGraph, label_masks, slot_mask_table

N_Z = 119
SIGMA_FLOOR = 1e-4


@dataclasses.dataclass
class Statistics:
    """Per-element references.

    Attributes:
      node_mean: ``[119, mul_0]`` mean of each l = 0 node component per element.
      node_std: ``[119, mul_0]`` standard deviation (1 where < 1e-4 or unseen).
      energy_ref: ``[119]`` per-element linear energy reference (Eh).
      energy_std: standard deviation of the referenced training energies (Eh per molecule).
      n_molecules: number of training molecules used.
    """

    node_mean: np.ndarray
    node_std: np.ndarray
    energy_ref: np.ndarray
    energy_std: float
    n_molecules: int

    def to_dict(self) -> dict:
        """JSON form."""
        return {"node_mean": self.node_mean.tolist(), "node_std": self.node_std.tolist(),
                "energy_ref": self.energy_ref.tolist(), "energy_std": self.energy_std,
                "n_molecules": self.n_molecules}

    @classmethod
    def from_dict(cls, d: dict) -> "Statistics":
        """Inverse of :meth:`to_dict`."""
        return cls(node_mean=np.asarray(d["node_mean"], np.float64),
                   node_std=np.asarray(d["node_std"], np.float64),
                   energy_ref=np.asarray(d["energy_ref"], np.float64),
                   energy_std=float(d["energy_std"]), n_molecules=int(d["n_molecules"]))

    def save(self, path: str) -> None:
        """Writes JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str) -> "Statistics":
        """Reads JSON written by :meth:`save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def reference_energy(self, species: np.ndarray) -> float:
        """``sum_i w[Z_i]`` of one molecule (Eh)."""
        return float(self.energy_ref[np.asarray(species)].sum())


NODE_REFERENCES = ("shift", "standardize")


def compute_statistics(graphs: Iterable[MolGraph], node_layout: blocks.IrrepsLayout,
                       ridge: float = 1e-8, node_reference: str = "shift") -> Statistics:
    """Computes :class:`Statistics` from training graphs.

    Args:
      graphs: training molecules (with node labels for the node statistics; with energies
        for the energy reference; either may be absent).
      node_layout: the node labels' irreps layout.
      ridge: Tikhonov term of the energy least squares (for elements seen rarely).
      node_reference: ``"shift"`` (subtract the per-element mean; ``node_std`` is all ones)
        or ``"standardize"`` (also divide by the per-element standard deviation).

    Returns:
      The statistics.
    """
    if node_reference not in NODE_REFERENCES:
        raise ValueError(f"node_reference={node_reference!r}: use one of {NODE_REFERENCES}")
    mul0 = node_layout.muls[0]
    table = slot_mask_table(node_layout.template)
    s1 = np.zeros((N_Z, mul0))
    s2 = np.zeros((N_Z, mul0))
    cnt = np.zeros((N_Z, mul0))
    counts, energies = [], []
    for g in graphs:
        if g.node_labels is not None:
            y0 = g.node_labels[:, :mul0]
            m = label_masks(g.species, g.species, node_layout, table)[:, :mul0]
            np.add.at(s1, g.species, np.where(m, y0, 0.0))
            np.add.at(s2, g.species, np.where(m, y0 * y0, 0.0))
            np.add.at(cnt, g.species, m)
        if np.isfinite(g.energy):
            counts.append(np.bincount(g.species, minlength=N_Z))
            energies.append(g.energy)
    mean = np.divide(s1, cnt, out=np.zeros_like(s1), where=cnt > 0)
    var = np.divide(s2, cnt, out=np.zeros_like(s2), where=cnt > 0) - mean ** 2
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where((std < SIGMA_FLOOR) | (cnt < 2), 1.0, std)
    if node_reference == "shift":
        std = np.ones_like(std)
    energy_ref = np.zeros(N_Z)
    energy_std = 1.0
    if energies:
        a = np.asarray(counts, np.float64)
        e = np.asarray(energies)
        used = a.sum(0) > 0
        au = a[:, used]
        w = np.linalg.solve(au.T @ au + ridge * np.eye(au.shape[1]), au.T @ e)
        energy_ref[used] = w
        resid = e - a @ energy_ref
        energy_std = float(resid.std()) if len(e) > 1 and resid.std() > 0 else 1.0
    return Statistics(node_mean=mean, node_std=std, energy_ref=energy_ref,
                      energy_std=energy_std, n_molecules=len(energies) or int(cnt.any()))


def standardize_nodes(node_labels, species, stats_mean, stats_std, mul0: int):
    """Physical node irreps -> standardised (only the l = 0 components change).

    Works on numpy and jax arrays. ``node_labels [..., D_node]``, ``species [...]``.
    """
    xp = blocks._xp(node_labels)
    mu = xp.asarray(stats_mean, node_labels.dtype)[species]
    sd = xp.asarray(stats_std, node_labels.dtype)[species]
    l0 = (node_labels[..., :mul0] - mu) / sd
    return xp.concatenate([l0, node_labels[..., mul0:]], axis=-1)


def destandardize_nodes(node_std_labels, species, stats_mean, stats_std, mul0: int):
    """Inverse of :func:`standardize_nodes`."""
    xp = blocks._xp(node_std_labels)
    mu = xp.asarray(stats_mean, node_std_labels.dtype)[species]
    sd = xp.asarray(stats_std, node_std_labels.dtype)[species]
    l0 = node_std_labels[..., :mul0] * sd + mu
    return xp.concatenate([l0, node_std_labels[..., mul0:]], axis=-1)
