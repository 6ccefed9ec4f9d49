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
and inside checkpoints. For a spin-resolved model (``spin_resolved``) the node references and
the label RMS units are computed over the alpha and the beta labels together (a graph with
restricted labels counts its labels once per spin, as the loss does), and both spins are
normalised with them (docs/model_and_training.md, "Open shells").
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
RMS_FLOOR = 1e-6  # Eh: a degree without labels gets this unit instead of 0
LABEL_SCALES = ("rms", "rms_per_degree", "none")


def _array_or_none(x):
    return None if x is None else np.asarray(x, np.float64)


@dataclasses.dataclass
class Statistics:
    """Per-element references.

    Attributes:
      node_mean: ``[119, mul_0]`` mean of each l = 0 node component per element.
      node_std: ``[119, mul_0]`` standard deviation (1 where < 1e-4 or unseen).
      energy_ref: ``[119]`` per-element linear energy reference (Eh).
      energy_std: standard deviation of the referenced training energies (Eh per molecule).
      n_molecules: number of training molecules used.
      node_rms, edge_rms: ``[l_max + 1]`` root mean square of the valid node (referenced)
        and edge label irreps of each degree l (Eh).
      label_rms: the root mean square over all of them (Eh). The three are None in
        statistics saved before they existed and 0 for data without Hamiltonian labels;
        they are the label units of the Hamiltonian head (:meth:`label_scales`).
      spin_rms: the root mean square of the spin half-difference ``(alpha - beta) / 2`` over
        the valid node and edge label entries of the open-shell training molecules (Eh): the
        unit of the ``sum_diff`` head's difference part (:meth:`spin_scales`); None when not
        spin-resolved or without open shells.
    """

    node_mean: np.ndarray
    node_std: np.ndarray
    energy_ref: np.ndarray
    energy_std: float
    n_molecules: int
    node_rms: np.ndarray | None = None
    edge_rms: np.ndarray | None = None
    label_rms: float | None = None
    spin_rms: float | None = None

    def to_dict(self) -> dict:
        """JSON form."""
        d = {"node_mean": self.node_mean.tolist(), "node_std": self.node_std.tolist(),
             "energy_ref": self.energy_ref.tolist(), "energy_std": self.energy_std,
             "n_molecules": self.n_molecules}
        if self.label_rms is not None:
            d.update(node_rms=self.node_rms.tolist(), edge_rms=self.edge_rms.tolist(),
                     label_rms=self.label_rms)
        if self.spin_rms is not None:
            d["spin_rms"] = self.spin_rms
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Statistics":
        """Inverse of :meth:`to_dict`."""
        return cls(node_mean=np.asarray(d["node_mean"], np.float64),
                   node_std=np.asarray(d["node_std"], np.float64),
                   energy_ref=np.asarray(d["energy_ref"], np.float64),
                   energy_std=float(d["energy_std"]), n_molecules=int(d["n_molecules"]),
                   node_rms=_array_or_none(d.get("node_rms")),
                   edge_rms=_array_or_none(d.get("edge_rms")), label_rms=d.get("label_rms"),
                   spin_rms=d.get("spin_rms"))

    def label_scales(self, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(node_scales, edge_scales)`` per degree l for the Hamiltonian head.

        Args:
          mode: ``"rms"`` (one scale, the RMS over every node and edge label entry),
            ``"rms_per_degree"`` (the RMS of each degree, nodes and edges apart) or ``"none"``
            (unit scales: the head predicts Eh directly, as before these statistics).
        """
        if mode == "none" or self.label_rms == 0.0:  # 0: trained without H labels
            return (), ()
        if mode not in LABEL_SCALES:
            raise ValueError(f"label scale {mode!r}: use one of {LABEL_SCALES}")
        if self.label_rms is None:
            raise ValueError(f"label scale {mode!r} needs label statistics, which these "
                             "statistics (saved by an older version) lack: set "
                             "config.heads.label_scale='none' to use them.")
        if mode == "rms_per_degree":
            return (tuple(float(max(x, RMS_FLOOR)) for x in self.node_rms),
                    tuple(float(max(x, RMS_FLOOR)) for x in self.edge_rms))
        one = float(max(self.label_rms, RMS_FLOOR))
        return (one,) * len(self.node_rms), (one,) * len(self.edge_rms)

    def spin_scales(self, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(node_scales, edge_scales)`` of the ``sum_diff`` head's difference part D.

        D = (alpha - beta) / 2 is a small exchange term (a few mEh, against the ~0.1 Eh of
        H itself), so in the units of :meth:`label_scales` every optimiser step would move it
        by far more than its size (the cause measured in docs/learning_efficiency.md). With
        ``mode`` other than ``"none"`` and open shells in the training data, its unit is
        ``spin_rms``; otherwise the units of :meth:`label_scales`.
        """
        node, edge = self.label_scales(mode)
        if mode == "none" or not self.spin_rms:
            return node, edge
        one = float(max(self.spin_rms, RMS_FLOOR))
        return (one,) * len(node), (one,) * len(edge)

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
                       ridge: float = 1e-8, node_reference: str = "shift",
                       edge_layout: blocks.IrrepsLayout | None = None,
                       spin_resolved: bool = False) -> Statistics:
    """Computes :class:`Statistics` from training graphs.

    Args:
      graphs: training molecules (with node labels for the node statistics; with energies
        for the energy reference; either may be absent).
      node_layout: the node labels' irreps layout.
      ridge: Tikhonov term of the energy least squares (for elements seen rarely).
      node_reference: ``"shift"`` (subtract the per-element mean; ``node_std`` is all ones)
        or ``"standardize"`` (also divide by the per-element standard deviation).
      edge_layout: the edge labels' irreps layout (needed for the label RMS).
      spin_resolved: take the node references and label RMS over both spins' labels (the
        beta labels of a graph, or its alpha labels again where they are restricted).

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
    node_deg = _degrees(node_layout)
    node_sq, node_n = np.zeros(len(node_layout.muls)), np.zeros(len(node_layout.muls))
    edge_deg = _degrees(edge_layout) if edge_layout is not None else None
    edge_sq = np.zeros(len(edge_layout.muls)) if edge_layout is not None else None
    edge_n = np.zeros_like(edge_sq) if edge_layout is not None else None
    counts, energies = [], []
    spin_sq, spin_n = 0.0, 0
    for g in graphs:
        node_sets = _spin_labels(g.node_labels, g.node_labels_beta, spin_resolved)
        edge_sets = _spin_labels(g.edge_labels, g.edge_labels_beta, spin_resolved)
        if node_sets:
            m = label_masks(g.species, g.species, node_layout, table)
        for y in node_sets:
            y0 = y[:, :mul0]
            np.add.at(s1, g.species, np.where(m[:, :mul0], y0, 0.0))
            np.add.at(s2, g.species, np.where(m[:, :mul0], y0 * y0, 0.0))
            np.add.at(cnt, g.species, m[:, :mul0])
            _add_squares(node_sq, node_n, y[:, mul0:], m[:, mul0:],
                         node_deg[mul0:])  # l = 0 follows from s1, s2 below
        if spin_resolved and g.node_labels_beta is not None and g.spin != 0:
            d = (g.node_labels - g.node_labels_beta) / 2
            m = label_masks(g.species, g.species, node_layout, table)
            spin_sq += float((np.where(m, d, 0.0) ** 2).sum())
            spin_n += int(m.sum())
        if edge_sets and edge_layout is not None and len(g.senders):
            zs, zr = g.species[g.senders], g.species[g.receivers]
            m = label_masks(zs, zr, edge_layout, table) & g.labelled_edges()[:, None]
            for y in edge_sets:
                _add_squares(edge_sq, edge_n, y, m, edge_deg)
            if spin_resolved and g.edge_labels_beta is not None and g.spin != 0:
                d = (g.edge_labels - g.edge_labels_beta) / 2
                spin_sq += float((np.where(m, d, 0.0) ** 2).sum())
                spin_n += int(m.sum())
        if np.isfinite(g.energy):
            counts.append(np.bincount(g.species, minlength=N_Z))
            energies.append(g.energy)
    mean = np.divide(s1, cnt, out=np.zeros_like(s1), where=cnt > 0)
    var = np.divide(s2, cnt, out=np.zeros_like(s2), where=cnt > 0) - mean ** 2
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where((std < SIGMA_FLOOR) | (cnt < 2), 1.0, std)
    if node_reference == "shift":
        std = np.ones_like(std)
    # Squares of the referenced l = 0 labels: sum (y - mu)^2 / sd^2 from the raw sums.
    sq0 = (s2 - 2 * mean * s1 + mean ** 2 * cnt) / std ** 2
    node_sq[0], node_n[0] = max(float(sq0.sum()), 0.0), float(cnt.sum())
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
    rms = {}
    if edge_layout is not None:  # label_rms 0: no Hamiltonian labels (energy-only data)
        n_all = node_n.sum() + edge_n.sum()
        rms = dict(node_rms=np.sqrt(node_sq / np.maximum(node_n, 1)),
                   edge_rms=np.sqrt(edge_sq / np.maximum(edge_n, 1)),
                   label_rms=float(np.sqrt((node_sq.sum() + edge_sq.sum()) / n_all))
                   if n_all else 0.0)
        if spin_n:
            rms["spin_rms"] = float(np.sqrt(spin_sq / spin_n))
    return Statistics(node_mean=mean, node_std=std, energy_ref=energy_ref,
                      energy_std=energy_std, n_molecules=len(energies) or int(cnt.any()),
                      **rms)


def _spin_labels(alpha, beta, spin_resolved: bool) -> list[np.ndarray]:
    """The label arrays of one graph that enter the statistics: ``[alpha]``, with
    ``spin_resolved`` ``[alpha, beta]`` (``beta`` = ``alpha`` for restricted labels)."""
    if alpha is None:
        return []
    if not spin_resolved:
        return [alpha]
    return [alpha, alpha if beta is None else beta]


def _degrees(layout: blocks.IrrepsLayout) -> np.ndarray:
    """The degree l of each component of a layout's flat irreps vector."""
    return np.concatenate([np.full(mul * (2 * l + 1), l, np.int64)
                           for l, mul in enumerate(layout.muls)])


def _add_squares(sq: np.ndarray, n: np.ndarray, y: np.ndarray, mask: np.ndarray,
                 degree: np.ndarray) -> None:
    """Adds the squares and counts of the masked entries of ``y [R, D]`` per degree."""
    np.add.at(sq, degree, np.where(mask, y * y, 0.0).sum(0))
    np.add.at(n, degree, mask.sum(0))


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
