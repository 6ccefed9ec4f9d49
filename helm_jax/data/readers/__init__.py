"""Dataset readers, all yielding :class:`Record` (Angstrom, Eh, PySCF AO order), by kind.

    ds = open_dataset("omol_csh_58k_train.h5")      # kind detected from the file
    rec = ds[17]                                    # one Record, read on demand
    parts = ds.splits(seed=0, sizes={"train": 1000, "val": 100, "test": None})

| kind (module) | file | level, basis (what `basis`/`ecp` name) | stored order / units |
|---|---|---|---|
| ``h5`` | project HDF5 (``format`` attr) | file attrs | PySCF; Angstrom, Eh |
| ``omol_csh`` | OMol_CSH HDF5 | wB97M-V/def2-TZVPD + ECP | ``omol_csh`` quirk; Angstrom, Eh |
| ``schnorb`` | SchNOrb MD17 ASE SQLite | PBE/def2-SVP (ORCA) | ``orca``; see its module |
| ``nabladft`` | nablaDFT SQLite | wB97X-D/def2-SVP (Psi4) | ``psi4``; bohr, Eh/bohr |
| ``qh9`` | QH9 LMDB | B3LYP/def2-SVP (PySCF) | PySCF; Angstrom, Eh |
| ``xyz`` | extended xyz (ASE) | none: energies and forces only | eV, eV/A |
| ``deeph`` | DeepH-pack folders (periodic) | ``basis=`` (shells must match) | OpenMX order; eV |
| ``cp2k`` | CP2K Gamma-point folders (periodic) | ``basis=`` (shells must match) | CP2K order; Eh |

Each kind is a module of this package holding one :class:`Reader` subclass; :data:`READERS`
maps the kind to the class. Every reader opens its file lazily, once per process, and drops
the handle when pickled, so it can be sent to loader worker processes; nothing but the list
of keys is held in memory. Each record is validated (finite coordinates, no atoms closer
than 0.1 A, charge/spin consistent with the electrons) and its matrices must have the AO
count of its elements in the reader's basis, else ``ValueError`` names the file, the record
and the problem. Splits of a dataset are :mod:`helm_jax.data.splits`.

Periodic data (docs/periodic.md): ``deeph`` and ``cp2k`` folders, and project files written
by the periodic labeller (``open_dataset(path, periodic=True)``; without it such a file is
refused), yield Records with ``cell``, ``pbc`` and ``periodic`` (real-space blocks H_ij(T),
S_ij(T)) and ``fock = overlap = None``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

import h5py

from helm_jax.data import h5format
from helm_jax.data.records import LIBRARY_ERRORS, DataError
from helm_jax.data.readers.base import Reader, formula, require_file, sqlite_readonly
from helm_jax.data.readers import cp2k as cp2k_layout
from helm_jax.data.readers import deeph as deeph_layout
from helm_jax.data.readers.concat import ConcatReader
from helm_jax.data.readers.cp2k import CP2KReader
from helm_jax.data.readers.deeph import DeepHReader
from helm_jax.data.readers.h5 import ProjectH5Reader
from helm_jax.data.readers.nabladft import NablaDFTReader
from helm_jax.data.readers.omol_csh import OmolCshReader
from helm_jax.data.readers.qh9 import QH9Reader
from helm_jax.data.readers.schnorb import SchNOrbReader
from helm_jax.data.readers.xyz import XYZReader

READERS: dict[str, type[Reader]] = {cls.kind: cls for cls in (
    ProjectH5Reader, OmolCshReader, SchNOrbReader, NablaDFTReader, QH9Reader, XYZReader,
    DeepHReader, CP2KReader)}
KINDS = tuple(READERS)

__all__ = ["KINDS", "READERS", "CP2KReader", "ConcatReader", "DeepHReader", "NablaDFTReader",
           "OmolCshReader", "ProjectH5Reader",
           "DataError", "QH9Reader", "Reader", "SchNOrbReader", "XYZReader", "detect_kind", "formula",
           "open_dataset", "reader_class", "require_file", "sqlite_readonly"]


def reader_class(kind: str) -> type[Reader]:
    """The reader class of a dataset kind; ValueError listing :data:`KINDS` when unknown."""
    if kind not in READERS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")
    return READERS[kind]


def _sqlite_tables(path: str) -> set[str]:
    with contextlib.closing(sqlite_readonly(path)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def detect_kind(path: str) -> str:
    """Tells the dataset kind of a file from its extension and content.

    Raises:
      FileNotFoundError: no such path.
      ValueError: a layout none of the readers knows.
    """
    path = require_file(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "data.mdb")):
            return "qh9"
        if deeph_layout.DeepHReader.structure_dirs(path):
            return "deeph"
        if cp2k_layout.CP2KReader.structure_dirs(path):
            return "cp2k"
        raise ValueError(f"{path} is a directory that is neither a QH9 LMDB (data.mdb), a "
                         "DeepH dataset (hamiltonians.h5, lat.dat) nor CP2K structure folders "
                         "(*.xyz, *-KS_SPIN_1-1_0*.csr)")
    if path.endswith((".lmdb", ".mdb")):
        return "qh9"
    with open(path, "rb") as fh:
        magic = fh.read(16)
    if magic.startswith(b"\x89HDF\r\n\x1a\n"):
        with h5py.File(path, "r") as f:
            return "h5" if f.attrs.get("format") == h5format.FORMAT else "omol_csh"
    if path.endswith((".xyz", ".extxyz")):
        return "xyz"
    if magic.startswith(b"SQLite format 3"):
        tables = _sqlite_tables(path)
        if "systems" in tables:
            return "schnorb"
        if {"data", "basisset"} <= tables:
            return "nabladft"
        raise ValueError(f"{path}: SQLite tables {sorted(tables)} match neither an ASE db "
                         "(SchNOrb, table 'systems') nor nablaDFT (tables 'data', 'basisset')")
    raise ValueError(f"{path}: unknown layout (neither HDF5, SQLite nor LMDB); pass kind= one "
                     f"of {KINDS} if the extension misleads")


def open_dataset(path: str, kind: str | None = None, **kw) -> Reader:
    """Opens any supported dataset behind the common :class:`Reader` interface.

    Args:
      path: the file, or the QH9 LMDB directory.
      kind: one of :data:`KINDS`; None detects it with :func:`detect_kind`.
      **kw: reader options (e.g. ``force_unit`` for SchNOrb, ``split_file`` for nablaDFT).

    Returns:
      The reader.
    """
    path = require_file(path)  # FileNotFoundError stays what it is
    try:
        return reader_class(kind or detect_kind(path))(path, **kw)
    except DataError:
        raise
    except LIBRARY_ERRORS + (sqlite3.DatabaseError,) as err:
        raise DataError(
            f"{path}: cannot be read as a {kind or 'dataset'} file ({type(err).__name__}: "
            f"{err}). It is truncated, corrupt or of another format: copy or label it again, "
            f"or pass kind= one of {KINDS} if the detection picked the wrong one.") from err
