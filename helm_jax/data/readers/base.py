"""The :class:`Reader` interface every dataset reader implements, and shared helpers.

A reader opens its file lazily, once per process, and drops the handle when pickled, so it
can be sent to loader worker processes; :meth:`Reader._record` validates each structure and
converts its AO matrices to PySCF order.
"""

from __future__ import annotations

import functools
import operator
import os
import pathlib
import re
import sqlite3
from typing import Any, Mapping, Sequence

import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import conventions
from helm_jax.data import geometry
from helm_jax.data import splits as splits_lib
from helm_jax.data.records import LIBRARY_ERRORS, DataError, Record

_SPLIT_NAME = re.compile(r"(?<![a-z])(train|valid|val|test)\w*$")  # file stem "..._test_all"


@functools.lru_cache(maxsize=256)
def _transform(elements: tuple[int, ...], basis: str, ecp: str | None,
               convention: str) -> conventions.AOTransform:
    return conventions.to_pyscf_transform(elements, basis, ecp, convention)


def formula(elements: Sequence[int]) -> str:
    """Hill-ordered formula of atomic numbers, e.g. ``C2H6O``."""
    syms = [basis_lib.symbol(int(z)) for z in elements]
    order = sorted(set(syms), key=lambda s: (s != "C", s != "H", s) if "C" in syms else s)
    return "".join(s + (str(syms.count(s)) if syms.count(s) > 1 else "") for s in order)


def require_file(path: str) -> str:
    """Returns ``path`` as a string; raises FileNotFoundError naming it when it is missing."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file {path!r} does not exist: check the path")
    return path


def sqlite_readonly(path: str) -> sqlite3.Connection:
    """A read-only SQLite connection usable from any thread of the process."""
    uri = pathlib.Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


class Reader:
    """The interface every dataset reader implements.

    Attributes:
      path: the file (or LMDB directory).
      basis: PySCF basis name of the matrices.
      ecp: PySCF ECP name, or None.
      kind: its name in the registry (:data:`helm_jax.data.readers.KINDS`).
      convention: the AO order of the stored matrices (see :mod:`helm_jax.conventions`).
    """

    kind = ""
    convention = "pyscf"

    def __init__(self, path: str, basis: str, ecp: str | None = None):
        self.path = require_file(path)
        self.basis = basis
        self.ecp = ecp or None
        self._keys: list[str] = []
        self._handle_obj, self._pid = None, None

    @property
    def keys(self) -> list[str]:
        """The record names in the source (group names, row ids, ...), in index order."""
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, i: int) -> Record:
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records in {self.path}")
        i %= len(self)
        try:
            return self._read(i)
        except DataError:
            raise
        except LIBRARY_ERRORS + (sqlite3.DatabaseError,) as err:
            raise DataError(
                f"{self.path} [{self._keys[i] if i < len(self._keys) else i}]: record {i} "
                f"cannot be read ({type(err).__name__}: {err}); the file is truncated or "
                "corrupt: copy or label it again, and check it with python "
                "data_prep/verify.py --data=FILE.") from err

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path!r}, {len(self)} records, basis={self.basis!r}"
                f", ecp={self.ecp!r})")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle_obj": None, "_pid": None}

    def converged_indices(self) -> np.ndarray:
        """int64 ``[m]`` indices of the records whose SCF converged (all, unless the file says)."""
        return np.arange(len(self), dtype=np.int64)

    def splits(self, seed: int = 0,
               sizes: Mapping[str, int | None] | Sequence[int | None] = (None,),
               order: str = "random") -> dict[str, np.ndarray]:
        """Disjoint splits of the converged records (:func:`helm_jax.data.splits.assign`).

        Args:
          seed: seed of the permutation (``order="random"``).
          sizes: ``{name: count}`` or counts for ``("train", "val", "test")`` in order; at most
            one count may be None, meaning "all remaining records".
          order: ``"random"`` (a seeded permutation) or ``"contiguous"`` (file order).

        Returns:
          ``{name: sorted int64 indices}``.
        """
        return splits_lib.assign(self.converged_indices(), sizes, seed=seed, order=order,
                                 source=self.path)

    def published_splits(self) -> dict[str, np.ndarray]:
        """The dataset's own split. Datasets published as one file per split name the file."""
        match = _SPLIT_NAME.search(os.path.splitext(os.path.basename(self.path))[0])
        if match is None:
            raise NotImplementedError(
                f"{self.kind} defines no split inside {self.path}; use splits(seed, sizes)")
        return {match.group(0): self.converged_indices()}

    def _handle(self) -> Any:
        """The open file, (re)opened once per process."""
        if self._handle_obj is None or self._pid != os.getpid():
            self._handle_obj, self._pid = self._open(), os.getpid()
        return self._handle_obj

    def _open(self) -> Any:
        raise NotImplementedError

    def _read(self, i: int) -> Record:
        raise NotImplementedError

    def _record(self, *, key: str, elements, coords, fock, overlap=None, energy=None,
                forces=None, charge: int = 0, spin: int | None = None, converged: bool = True,
                ao_extras: Mapping[str, np.ndarray] | None = None,
                extras: Mapping[str, Any] | None = None, fock_beta=None) -> Record:
        """Validates one structure and converts its AO matrices to PySCF order.

        ``fock_beta`` is the beta Fock matrix of a spin-resolved label (``fock`` is then the
        alpha one), checked and converted exactly like ``fock``; None for restricted labels.
        ``ao_extras`` are further AO matrices ``[..., N, N]`` (converted like the Fock matrix);
        ``extras`` are other per-structure arrays, kept as they are. Both end in
        ``Record.extras``.
        """
        where = f"{self.path} [{key}]"
        try:
            z, _, spin = geometry.validate_structure(elements, coords, charge, spin,
                                                     basis=self.basis, ecp=self.ecp or "")
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        n_ao = basis_lib.molecule_n_ao(z, self.basis, self.ecp)
        if fock_beta is not None and fock is None:
            raise ValueError(f"{where}: a beta Fock matrix without an alpha one")
        mats = {"fock": fock, "fock_beta": fock_beta, "overlap": overlap, **(ao_extras or {})}
        for name, m in mats.items():
            if m is not None and (np.ndim(m) < 2 or np.shape(m)[-2:] != (n_ao, n_ao)):
                raise ValueError(
                    f"{where}: {name} has shape {list(np.shape(m))} but {formula(z)} has {n_ao} "
                    f"AOs in {self.basis}" + (f" + ECP {self.ecp}" if self.ecp else "")
                    + ": the file is in another basis or the matrix belongs to another molecule")
        _check_finite(where, {**mats, "energy": energy, "forces": forces, **(extras or {})})
        t = _transform(tuple(int(e) for e in z), self.basis, self.ecp, self.convention)
        conv = {k: None if m is None else t.apply(np.asarray(m, np.float64))
                for k, m in mats.items()}
        forces = None if forces is None else np.asarray(forces, np.float64).reshape(len(z), 3)
        return Record(elements=z, coords=np.asarray(coords, np.float64).reshape(len(z), 3),
                      fock=conv.pop("fock"), fock_beta=conv.pop("fock_beta"),
                      overlap=conv.pop("overlap"),
                      energy=None if energy is None else float(energy), forces=forces,
                      charge=int(charge), spin=int(spin), converged=bool(converged),
                      key=str(key), extras={**conv, **(extras or {})})


class FolderReader(Reader):
    """A dataset laid out as one structure folder, or a folder of structure folders (the
    periodic layouts: DeepH, CP2K). Subclasses set :attr:`layout` (the name in messages),
    :attr:`basis_hint` and :attr:`folder_hint` (what a structure folder holds) and implement
    :meth:`is_structure_dir`.

    Args:
      path: the dataset folder.
      basis: PySCF basis whose shells per element match the files' orbitals (required).
      ecp: PySCF ECP name, or None (only used to count AOs).
      cutoff: keep only pairs closer than this (Angstrom); None keeps every block.
    """

    layout = ""
    basis_hint = ""
    folder_hint = ""

    def __init__(self, path: str, basis: str | None = None, ecp: str | None = None,
                 cutoff: float | None = None):
        if not basis:
            raise ValueError(f"{type(self).__name__} needs basis=: the PySCF basis whose "
                             f"shells match {self.basis_hint} (e.g. basis='gth-dzvp')")
        super().__init__(path, basis, ecp)
        if not os.path.isdir(self.path):
            raise DataError(f"{self.path} is not a folder: a {self.layout} dataset is a "
                            f"folder with {self.folder_hint} (or a folder of such folders)")
        self.cutoff = cutoff
        self._keys = self.structure_dirs(self.path)
        if not self._keys:
            raise DataError(f"{self.path}: no {self.layout} structure folder (with "
                            f"{self.folder_hint}) here or in its subfolders")

    @staticmethod
    def is_structure_dir(folder: str) -> bool:
        """Whether ``folder`` holds one structure."""
        raise NotImplementedError

    @classmethod
    def structure_dirs(cls, root: str) -> list[str]:
        """The structure folders: ``root`` itself (``["."]``) or its sorted subfolders."""
        if cls.is_structure_dir(root):
            return ["."]
        return sorted(d for d in os.listdir(root)
                      if cls.is_structure_dir(os.path.join(root, d)))

    def _open(self):
        return None

    def _folder(self, i: int) -> tuple[str, str, str]:
        """``(key, folder, where)`` of structure i: its key, path and the name errors use."""
        key = self._keys[i]
        return key, os.path.normpath(os.path.join(self.path, key)), f"{self.path} [{key}]"


def _check_finite(where: str, arrays: Mapping[str, Any]) -> None:
    """Raises :class:`DataError` naming the first label array with a NaN or Inf."""
    for name, value in arrays.items():
        if value is None or isinstance(value, (str, bytes)):
            continue
        a = np.asarray(value)
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise DataError(
                f"{where}: dataset {name!r} holds {bad} non-finite value(s) (NaN or Inf) of "
                f"{a.size}: the label is corrupt. Relabel this structure (data_prep/label.py) "
                "or remove it from the file; check the whole file with python "
                "data_prep/verify.py --data=FILE --n=N.")
