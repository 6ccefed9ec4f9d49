"""The one record type every data source yields.

Readers of every dataset (the project's HDF5, OMol_CSH, SchNOrb MD17, nablaDFT, QH9, and the
periodic DeepH and CP2K layouts) convert their files to this record: Angstrom, Hartree, PySCF
AO order for the named basis. Everything downstream (graphs, batches, statistics, metrics)
reads only this type. Periodic structures carry ``cell``/``pbc`` and their real-space labels
``H_ij(T)``, ``S_ij(T)`` as :class:`PeriodicLabels` in ``Record.periodic`` (docs/periodic.md);
for molecules all three are None.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class DataError(ValueError):
    """A dataset file that cannot be used as it is: the message names the file, the record
    and the dataset, what is wrong and what to do."""


# What the file libraries (h5py, sqlite3, lmdb, ASE) raise on truncated, corrupt or
# malformed files; readers turn these into DataError.
LIBRARY_ERRORS = (OSError, RuntimeError, KeyError, IndexError, EOFError, StopIteration,
                  AttributeError, TypeError, UnicodeDecodeError)


@dataclasses.dataclass(frozen=True, eq=False)
class PeriodicLabels:
    """Real-space labels of a periodic structure: blocks of atom pairs across images.

    Pair ``p`` is atom ``pairs[p, 0]`` (i) in the home cell and atom ``pairs[p, 1]`` (j) in
    the cell shifted by the integer translation ``translations[p]`` (T, 0 along
    non-periodic axes); its block is ``H_ij(T) = <phi_i | H | phi_j(. - T @ cell)>``, of
    shape ``[n_ao(i), n_ao(j)]`` (PySCF AO order, Eh), stored row major in a flat
    concatenation at ``fock_blocks[block_offsets[p]:block_offsets[p + 1]]``. On-site blocks
    are the pairs ``(i, i, T = 0)``. ``H(k) = sum_p weight[p] exp(2 pi i k . T_p) H_p``
    (k fractional; the sign of PySCF's k-point matrices); see
    :mod:`helm_jax.data.periodic` and docs/periodic.md.

    Attributes:
      pairs: int32 ``[P, 2]`` atoms (i, j), 0-based; lexicographic (i, j, T) order.
      translations: int32 ``[P, 3]`` T.
      fock_blocks: float64 ``[sum n_i n_j]`` raw H(T) (not shifted by the Fermi level).
      overlap_blocks: float64 ``[sum n_i n_j]`` S(T), or None.
      block_offsets: int64 ``[P + 1]``.
      n_ao_per_atom: int32 ``[n_atoms]`` AOs of each atom.
      weight: float64 ``[P]`` Bloch-sum weight (``1 / multiplicity`` of tied minimum
        images of a k-mesh label, else 1).
      alias_distance: float64 ``[P]`` Angstrom, distance of the nearest image whose block
        the k-mesh summed into this one (inf when none, e.g. for real-space sources).
      kmesh: int32 ``[3]`` Monkhorst-Pack mesh of the SCF, or None (real-space sources).
      fermi: Fermi level in Eh, or None (see docs/periodic.md for its convention).
      homo, lumo, gap: highest occupied / lowest unoccupied level over the k-mesh and their
        difference (Eh), or None.
      n_electrons: electrons per cell in the calculation (pseudopotential cores excluded),
        or None where the source does not say.
      path_kpts: float64 ``[K, 3]`` fractional k-points of a high-symmetry path
        (:func:`helm_jax.data.periodic.high_symmetry_path`), or None.
      path_bands: float64 ``[K, nao]`` PySCF's ``mf.get_bands`` of the converged SCF at
        ``path_kpts`` (Eh, ascending; NaN-padded where canonical orthogonalisation dropped
        vectors): the off-mesh band reference of labeller runs with ``--band_path``, or None.
    """

    pairs: np.ndarray
    translations: np.ndarray
    fock_blocks: np.ndarray
    overlap_blocks: np.ndarray | None
    block_offsets: np.ndarray
    n_ao_per_atom: np.ndarray
    weight: np.ndarray
    alias_distance: np.ndarray
    kmesh: np.ndarray | None = None
    fermi: float | None = None
    homo: float | None = None
    lumo: float | None = None
    gap: float | None = None
    n_electrons: int | None = None
    path_kpts: np.ndarray | None = None
    path_bands: np.ndarray | None = None

    def pair_index(self) -> dict[tuple[int, int, int, int, int], int]:
        """``{(i, j, T1, T2, T3): p}``: the stored pair of each ``(i, j, T)``."""
        return {(int(i), int(j), *map(int, t)): p
                for p, ((i, j), t) in enumerate(zip(self.pairs, self.translations))}

    @property
    def n_pairs(self) -> int:
        """Number of stored pairs (on-site included)."""
        return int(self.pairs.shape[0])

    def block_shape(self, p: int) -> tuple[int, int]:
        """``(n_ao(i), n_ao(j))`` of pair ``p``."""
        i, j = self.pairs[p]
        return int(self.n_ao_per_atom[i]), int(self.n_ao_per_atom[j])

    def block(self, p: int, which: str = "fock") -> np.ndarray:
        """The ``[n_i, n_j]`` block of pair ``p`` (``which``: "fock" or "overlap")."""
        flat = self.fock_blocks if which == "fock" else self.overlap_blocks
        if flat is None:
            raise ValueError(f"no {which} blocks in this record")
        return flat[self.block_offsets[p]:self.block_offsets[p + 1]].reshape(
            self.block_shape(p))

    def fock_minus_mu_s(self, mu: float | None = None) -> np.ndarray:
        """Flat blocks of ``H(T) - mu S(T)``: the Hamiltonian referenced to the Fermi level,
        to compare Hamiltonians of different structures (as the HELM reference does with
        CP2K labels). ``mu`` defaults to the stored ``fermi``."""
        mu = self.fermi if mu is None else mu
        if mu is None or self.overlap_blocks is None:
            raise ValueError("H - mu S needs a Fermi level and overlap blocks")
        return self.fock_blocks - float(mu) * self.overlap_blocks


@dataclasses.dataclass(frozen=True)
class Record:
    """One molecular structure with its labels.

    Attributes:
      elements: int32 ``[n]`` atomic numbers.
      coords: float64 ``[n, 3]`` Angstrom.
      fock: float64 ``[N, N]`` Eh, PySCF AO order, or None (energy-only data). For
        spin-resolved (unrestricted, UKS/UHF) labels this is the alpha Fock matrix.
      fock_beta: float64 ``[N, N]`` the beta Fock matrix of unrestricted labels, or None
        (restricted labels: alpha = beta = ``fock``).
      overlap: float64 ``[N, N]`` or None (e.g. OMol_CSH files carry no overlap).
      energy: total energy in Eh, or None.
      forces: float64 ``[n, 3]`` Eh/Angstrom, or None.
      charge: total charge.
      spin: 2S = n_alpha - n_beta.
      converged: SCF convergence flag (True where the source does not say).
      key: the record's name in its source (group name, row id, ...).
      extras: further per-structure arrays (e.g. AO dipole integrals, large-basis targets).
      cell: float64 ``[3, 3]`` Angstrom, rows = lattice vectors, for periodic structures;
        None for molecules.
      pbc: bool ``[3]`` periodic axes, or None (molecules).
      periodic: the real-space labels of a periodic structure (:class:`PeriodicLabels`;
        ``fock``/``overlap`` are then None), or None.
    """

    elements: np.ndarray
    coords: np.ndarray
    fock: np.ndarray | None = None
    fock_beta: np.ndarray | None = None
    overlap: np.ndarray | None = None
    energy: float | None = None
    forces: np.ndarray | None = None
    charge: int = 0
    spin: int = 0
    converged: bool = True
    key: str = ""
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    periodic: PeriodicLabels | None = None

    @property
    def is_periodic(self) -> bool:
        """Whether the structure is periodic along at least one axis."""
        return self.pbc is not None and bool(np.any(self.pbc))

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(len(self.elements))

    @property
    def unrestricted(self) -> bool:
        """Whether the labels are spin-resolved (separate alpha and beta Fock matrices)."""
        return self.fock_beta is not None
