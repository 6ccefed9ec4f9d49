"""The one record type every data source yields.

Readers of every dataset (the project's HDF5, OMol_CSH, SchNOrb MD17, nablaDFT, QH9) convert
their files to this record: Angstrom, Hartree, PySCF AO order for the named basis. Everything
downstream (graphs, batches, statistics, metrics) reads only this type.
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

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(len(self.elements))

    @property
    def unrestricted(self) -> bool:
        """Whether the labels are spin-resolved (separate alpha and beta Fock matrices)."""
        return self.fock_beta is not None
