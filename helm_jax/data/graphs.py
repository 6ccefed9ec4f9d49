"""Molecular graphs with Hamiltonian block labels as irreps.

A :class:`MolGraph` is one molecule ready for batching (numpy, host side): directed edges
between all atom pairs closer than the cutoff (fully connected below it), and, when the
record carries a Fock matrix, its node and edge blocks as irreps
(:class:`helm_jax.blocks.IrrepsLayout`). Validity masks are not stored: they follow from
the atomic numbers (:func:`label_masks`), so batches stay small.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import blocks
from helm_jax.data.records import Record

MIN_DISTANCE = 0.1  # Angstrom; closer atoms are a geometry error.


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """How records become graphs.

    Attributes:
      template: the padded block template (basis of the dataset).
      cutoff: graph cutoff radius in Angstrom.
      reduced_nodes: store node labels in the reduced (unique-value) layout.
    """

    template: basis_lib.Template
    cutoff: float
    reduced_nodes: bool = True

    @property
    def node_layout(self) -> blocks.IrrepsLayout:
        """Irreps layout of node (diagonal-block) labels."""
        return blocks.irreps_layout(self.template, reduced=self.reduced_nodes)

    @property
    def edge_layout(self) -> blocks.IrrepsLayout:
        """Irreps layout of directed-edge (off-diagonal block) labels."""
        return blocks.irreps_layout(self.template, reduced=False)


@dataclasses.dataclass(frozen=True)
class MolGraph:
    """One molecule as a graph (host numpy arrays).

    Attributes:
      species: int32 ``[n]`` atomic numbers.
      positions: float64 ``[n, 3]`` Angstrom.
      senders, receivers: int32 ``[E]``; edge e is the directed pair
        ``senders[e] -> receivers[e]`` and carries block ``H[senders[e], receivers[e]]``.
      node_labels: ``[n, D_node]`` irreps of the diagonal blocks, or None.
      edge_labels: ``[E, D_edge]`` irreps of the off-diagonal blocks, or None.
      energy: total energy (Eh) or NaN.
      forces: ``[n, 3]`` Eh/Angstrom, or None.
      key: source record key.
    """

    species: np.ndarray
    positions: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    node_labels: np.ndarray | None
    edge_labels: np.ndarray | None
    energy: float
    forces: np.ndarray | None
    key: str = ""

    @property
    def n_node(self) -> int:
        """Number of atoms."""
        return int(len(self.species))

    @property
    def n_edge(self) -> int:
        """Number of directed edges."""
        return int(len(self.senders))


def check_geometry(elements: np.ndarray, coords: np.ndarray, key: str = "") -> None:
    """Raises ValueError for non-finite coordinates or atoms closer than 0.1 A."""
    where = f" in {key}" if key else ""
    coords = np.asarray(coords, np.float64)
    if coords.ndim != 2 or coords.shape != (len(elements), 3):
        raise ValueError(f"Coordinates{where} have shape {coords.shape}, expected "
                         f"({len(elements)}, 3).")
    bad = np.argwhere(~np.isfinite(coords))
    if len(bad):
        raise ValueError(f"Coordinates{where} contain NaN or inf (atom {bad[0][0]}); fix or "
                         "drop this structure.")
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1) + np.eye(len(coords)) * 1e9
    i, j = np.unravel_index(np.argmin(d), d.shape) if len(coords) > 1 else (0, 0)
    if len(coords) > 1 and d[i, j] < MIN_DISTANCE:
        raise ValueError(f"Atoms {i} and {j}{where} are {d[i, j]:.3g} A apart (< "
                         f"{MIN_DISTANCE} A): overlapping atoms, probably a duplicated atom or "
                         "coordinates in the wrong unit.")


def radius_edges(coords: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``i != j`` closer than ``cutoff`` (row-major order).

    Returns:
      ``(senders [E], receivers [E])`` int32.
    """
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    s, r = np.nonzero((d < cutoff) & ~np.eye(len(coords), dtype=bool))
    return s.astype(np.int32), r.astype(np.int32)


def build_graph(record: Record, spec: GraphSpec, with_labels: bool = True) -> MolGraph:
    """Converts a record to a graph with irreps labels.

    Args:
      record: the structure (PySCF AO order for ``spec.template``'s basis).
      spec: template, cutoff and label layout.
      with_labels: convert the Fock matrix to block irreps (if the record has one).

    Returns:
      The :class:`MolGraph`.

    Raises:
      ValueError: bad geometry, an element outside the template, or a Fock matrix whose size
        does not fit the basis.
    """
    z = np.asarray(record.elements, np.int32)
    coords = np.asarray(record.coords, np.float64)
    check_geometry(z, coords, record.key)
    for zi in set(z.tolist()):
        spec.template.element(zi)  # clear error for an element outside the template
    senders, receivers = radius_edges(coords, spec.cutoff)
    node_labels = edge_labels = None
    if with_labels and record.fock is not None:
        node_b, edge_b = blocks.full_to_blocks(np.asarray(record.fock, np.float64), z,
                                               spec.template, senders, receivers)
        node_labels = spec.node_layout.blocks_to_irreps(node_b)
        edge_labels = spec.edge_layout.blocks_to_irreps(edge_b)
    energy = np.nan if record.energy is None else float(record.energy)
    forces = None if record.forces is None else np.asarray(record.forces, np.float64)
    return MolGraph(species=z, positions=coords, senders=senders, receivers=receivers,
                    node_labels=node_labels, edge_labels=edge_labels, energy=energy,
                    forces=forces, key=record.key)


def slot_mask_table(template: basis_lib.Template) -> np.ndarray:
    """bool ``[119, n_slots]``: which template shell slots each element occupies."""
    table = np.zeros((119, len(template.slot_l)), bool)
    for z in template.elements:
        table[z] = template.slot_mask(z)
    return table


def label_masks(species_i, species_j, layout: blocks.IrrepsLayout, table):
    """Validity of each irreps label component for atom pairs (numpy or jax).

    Args:
      species_i: ``[...]`` atomic numbers of the row atoms (0 for padding: all invalid).
      species_j: ``[...]`` atomic numbers of the column atoms.
      layout: the labels' irreps layout.
      table: :func:`slot_mask_table` of the template.

    Returns:
      bool ``[..., layout.dim]``.
    """
    xp = blocks._xp(species_i)
    table = xp.asarray(table)
    return layout.valid_mask(table[species_i], table[species_j])
