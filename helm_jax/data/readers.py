"""Readers of the public Hamiltonian datasets, all yielding :class:`Record` (Angstrom, Eh, PySCF AO order).

    ds = open_dataset("omol_csh_58k_train.h5")      # kind detected from the file
    rec = ds[17]                                    # one Record, read on demand
    parts = ds.splits(seed=0, sizes={"train": 1000, "val": 100, "test": None})

| kind | file | level, basis (what `basis`/`ecp` name) | stored order / units |
|---|---|---|---|
| ``h5`` | project HDF5 (``format`` attr) | file attrs | PySCF; Angstrom, Eh |
| ``omol_csh`` | OMol_CSH HDF5 | wB97M-V/def2-TZVPD + ECP | ``omol_csh`` quirk; Angstrom, Eh |
| ``schnorb`` | SchNOrb MD17 ASE SQLite | PBE/def2-SVP (ORCA) | ``orca``; see readers_sql |
| ``nabladft`` | nablaDFT SQLite | wB97X-D/def2-SVP (Psi4) | ``psi4``; bohr, Eh/bohr |
| ``qh9`` | QH9 LMDB | B3LYP/def2-SVP (PySCF) | PySCF; Angstrom, Eh |

Every reader opens its file lazily, once per process, and drops the handle when pickled, so
it can be sent to loader worker processes; nothing but the list of keys is held in memory.
Each record is validated (finite coordinates, no atoms closer than 0.1 A, charge/spin
consistent with the electrons) and its matrices must have the AO count of its elements in
the reader's basis, else ``ValueError`` names the file, the record and the problem.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import operator
import os
import pathlib
import pickle
import re
import sqlite3
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import conventions
from helm_jax.data import geometry, h5format
from helm_jax.data.records import Record
from helm_jax.units import HARTREE_EV

KINDS = ("h5", "omol_csh", "schnorb", "nabladft", "qh9", "xyz")
_SPLIT_NAME = re.compile(r"(?<![a-z])(train|valid|val|test)\w*$")  # file stem "..._test_all"
_LMDB_ENVS: dict[tuple[int, str], Any] = {}  # (pid, real path) -> open lmdb.Environment


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


class Reader:
    """The interface every dataset reader implements.

    Attributes:
      path: the file (or LMDB directory).
      basis: PySCF basis name of the matrices.
      ecp: PySCF ECP name, or None.
      kind: one of :data:`KINDS`.
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
        return self._read(i % len(self))

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
        """Disjoint splits of the converged records.

        Args:
          seed: seed of the permutation (``order="random"``).
          sizes: ``{name: count}`` or counts for ``("train", "val", "test")`` in order; at most
            one count may be None, meaning "all remaining records".
          order: ``"random"`` (a seeded permutation) or ``"contiguous"`` (file order: the
            first records train, the next validate, ...; published splits such as "frames
            0-249 train, 250-299 validation" and the HELM reference's keys-list slices).

        Returns:
          ``{name: sorted int64 indices}``.
        """
        if not isinstance(sizes, Mapping):
            names = ("train", "val", "test", *[f"split{k}" for k in range(3, len(sizes))])
            sizes = dict(zip(names, sizes))
        if order not in ("random", "contiguous"):
            raise ValueError(f"split order {order!r}: use 'random' or 'contiguous'")
        pool = self.converged_indices()
        if order == "random":
            pool = np.random.default_rng(seed).permutation(pool)
        fixed = sum(int(n) for n in sizes.values() if n is not None)
        if sum(n is None for n in sizes.values()) > 1 or fixed > len(pool) or any(
                n is not None and n < 0 for n in sizes.values()):
            raise ValueError(f"split sizes {dict(sizes)} do not fit the {len(pool)} converged "
                             f"records of {self.path} (at most one size may be None = rest)")
        out, start = {}, 0
        for name, n in sizes.items():
            n = len(pool) - fixed if n is None else int(n)
            out[name] = np.sort(pool[start:start + n]).astype(np.int64)
            start += n
        return out

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
                extras: Mapping[str, Any] | None = None) -> Record:
        """Validates one structure and converts its AO matrices to PySCF order.

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
        mats = {"fock": fock, "overlap": overlap, **(ao_extras or {})}
        for name, m in mats.items():
            if m is not None and (np.ndim(m) < 2 or np.shape(m)[-2:] != (n_ao, n_ao)):
                raise ValueError(
                    f"{where}: {name} has shape {list(np.shape(m))} but {formula(z)} has {n_ao} "
                    f"AOs in {self.basis}" + (f" + ECP {self.ecp}" if self.ecp else "")
                    + ": the file is in another basis or the matrix belongs to another molecule")
        t = _transform(tuple(int(e) for e in z), self.basis, self.ecp, self.convention)
        conv = {k: None if m is None else t.apply(np.asarray(m, np.float64))
                for k, m in mats.items()}
        forces = None if forces is None else np.asarray(forces, np.float64).reshape(len(z), 3)
        return Record(elements=z, coords=np.asarray(coords, np.float64).reshape(len(z), 3),
                      fock=conv.pop("fock"), overlap=conv.pop("overlap"),
                      energy=None if energy is None else float(energy), forces=forces,
                      charge=int(charge), spin=int(spin), converged=bool(converged),
                      key=str(key), extras={**conv, **(extras or {})})


class ProjectH5Reader(Reader):
    """The project's own HDF5 files (``helm_jax.h5/v1``), streamed through ``H5Dataset``."""

    kind = "h5"

    def __init__(self, path: str):
        ds = h5format.H5Dataset(require_file(path))
        if not ds.is_native:
            raise ValueError(f"{path} has no format={h5format.FORMAT!r} attr: it is not a "
                             "project file (an OMol_CSH file? use kind='omol_csh')")
        super().__init__(path, str(ds.attrs["basis"]), str(ds.attrs.get("ecp", "")))
        self._ds = ds
        self._keys = ds.keys

    def converged_indices(self) -> np.ndarray:
        """int64 ``[m]`` indices of the structures stored with ``converged=True``."""
        return self._ds.converged_indices()

    def _read(self, i: int) -> Record:
        r = self._ds.read(self._keys[i])
        is_ao = {k: k.startswith(h5format.AO_PREFIX) for k in r.extras}
        return self._record(key=r.key, elements=r.elements, coords=r.coords, fock=r.fock,
                            overlap=r.overlap, energy=r.energy, forces=r.forces,
                            charge=r.charge, spin=r.spin, converged=r.converged,
                            ao_extras={k: v for k, v in r.extras.items() if is_ao[k]},
                            extras={k: v for k, v in r.extras.items() if not is_ao[k]})


class OmolCshReader(Reader):
    """OMol_CSH_58k HDF5 files: one group per molecule, packed Fock in the ``omol_csh`` order.

    The group list comes from ``<file>.keys.json`` when it is the reference implementation's
    plain JSON list (its order defines the indices); otherwise ``H5Dataset`` lists the groups
    and caches them in that file. The ``spin`` attr of OMol files is the multiplicity 2S+1
    (OMol25 convention); it is told from 2S by electron-count parity.
    """

    kind = "omol_csh"
    convention = "omol_csh"

    def __init__(self, path: str, basis: str = "def2-tzvpd", ecp: str | None = "def2-tzvpd"):
        ds = h5format.H5Dataset(require_file(path))
        if ds.is_native:
            raise ValueError(f"{path} is a project helm_jax.h5 file; use kind='h5'")
        super().__init__(path, basis, ecp)
        self._ds = ds
        self._keys = _list_sidecar(path + h5format.SIDECAR_SUFFIX) or ds.keys

    def _read(self, i: int) -> Record:
        r = self._ds.read(self._keys[i])
        core = sum(geometry.ecp_core_electrons(int(z), self.basis, self.ecp or "")
                   for z in r.elements)
        n_electrons = int(np.sum(r.elements)) - core - r.charge
        spin = r.spin if (r.spin - n_electrons) % 2 == 0 else r.spin - 1
        return self._record(key=r.key, elements=r.elements, coords=r.coords, fock=r.fock,
                            charge=r.charge, spin=spin)


def _list_sidecar(path: str) -> list[str] | None:
    try:
        with open(path) as fh:
            cached = json.load(fh)
    except (OSError, ValueError):
        return None
    return [str(k) for k in cached] if isinstance(cached, list) else None


class QH9Reader(Reader):
    """QH9 LMDB (``QH9Stable.lmdb`` / ``QH9Dynamic.lmdb``): B3LYP/def2-SVP by PySCF.

    Value = pickle of ``{id, num_nodes, atoms: int32 bytes, pos: float64 bytes, Ham: float64
    bytes}`` under the 4-byte big-endian id. Units and order, from the QH9 code
    (divelab/AIRS, OpenDFT/QHBench/QH9): ``dataset_generation_examples/QH9_stable.py`` builds
    the molecule from QM9 coordinates with ``unit='ang'`` and stores ``mf.get_fock()`` as is,
    and ``datasets.py`` writes ``'pos': row[3], # ang``; its ``BOHR2ANG`` is never applied to
    ``pos``, and ``test_dft_acceleration.py`` rebuilds the PySCF molecule from ``pos`` with
    ``unit='ang'`` and maps predictions back with ``back2pyscf``. So ``pos`` is Angstrom and
    ``Ham`` is in PySCF's own AO order (the ``pyscf_def2svp`` p ``[1, 2, 0]`` map there is the
    model-side change to e3nn order, not the storage order). No overlap is stored.
    """

    kind = "qh9"

    def __init__(self, path: str, basis: str = "def2-svp"):
        super().__init__(path, basis)
        with self._handle().begin() as txn:
            raw = list(txn.cursor().iternext(keys=True, values=False))
        self._raw_keys = sorted(raw, key=lambda k: (len(k), k))  # big-endian ids: numeric order
        self._keys = [str(int.from_bytes(k, "big")) for k in self._raw_keys]

    def _open(self):
        try:
            import lmdb  # pylint: disable=import-outside-toplevel
        except ImportError as err:
            raise ImportError("QH9 needs the lmdb package: pip install lmdb==3.0.0") from err
        key = (os.getpid(), os.path.realpath(self.path))
        if key not in _LMDB_ENVS:  # LMDB allows one open environment per file and process.
            try:
                _LMDB_ENVS[key] = lmdb.open(self.path, subdir=os.path.isdir(self.path),
                                            readonly=True, lock=False, readahead=False)
            except lmdb.Error as err:
                raise ValueError(f"{self.path} is not a readable LMDB database: {err}") from err
        return _LMDB_ENVS[key]

    def _load(self, i: int) -> dict:
        with self._handle().begin() as txn:
            value = txn.get(self._raw_keys[i])
        try:
            return pickle.loads(value)  # The QH9 format is a pickle: read trusted files only.
        except Exception as err:
            raise ValueError(f"{self.path} [{self._keys[i]}]: value is not a QH9 pickle "
                             f"({err})") from err

    def _read(self, i: int) -> Record:
        d, key = self._load(i), self._keys[i]
        n = int(d["num_nodes"])
        atoms = np.frombuffer(d["atoms"], np.int32)
        pos = np.frombuffer(d["pos"], np.float64)
        if atoms.shape != (n,) or pos.shape != (3 * n,):
            raise ValueError(f"{self.path} [{key}]: num_nodes={n} but {atoms.size} int32 atoms "
                             f"and {pos.size} float64 coordinates")
        ham = np.frombuffer(d["Ham"], np.float64)
        side = math.isqrt(ham.size)
        if side * side != ham.size:
            raise ValueError(f"{self.path} [{key}]: Ham has {ham.size} entries, not a square")
        return self._record(key=key, elements=atoms, coords=pos.reshape(n, 3),
                            fock=ham.reshape(side, side))

    def published_splits(self, name: str = "random") -> dict[str, np.ndarray]:
        """QH9Stable's splits as QHBench builds them, over the records in id order.

        Args:
          name: ``"random"`` (``RandomState(43)`` permutation, 80/10/10) or ``"size_ood"``
            (train <= 20 atoms, val 21-22, test >= 23; reads every record).

        Returns:
          ``{"train", "val", "test"}`` index arrays.
        """
        n = len(self)
        if name == "random":
            perm = np.random.RandomState(seed=43).permutation(n)
            a, b = int(n * 0.8), int(n * 0.1)
            return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:a + b]),
                    "test": np.sort(perm[a + b:])}
        if name == "size_ood":
            atoms = np.array([int(self._load(i)["num_nodes"]) for i in range(n)])
            return {"train": np.flatnonzero(atoms <= 20),
                    "val": np.flatnonzero((atoms >= 21) & (atoms <= 22)),
                    "test": np.flatnonzero(atoms >= 23)}
        raise ValueError(f"unknown QH9 split {name!r}: choose 'random' or 'size_ood'")


class XYZReader(Reader):
    """Extended-xyz frames with energies and forces but no matrices (e.g. rMD17).

    Energies come from the header (``Energy=``/``energy=``), forces from the ``forces``
    columns, both in eV and eV/A as in rMD17 (``energy_unit="hartree"`` if the file is in Eh).
    The basis only sets the model's block template; records carry no Fock matrix, so such
    files serve energy (transfer) runs. The file is parsed once per process.
    """

    kind = "xyz"
    convention = "pyscf"

    def __init__(self, path: str, basis: str = "def2-svp", ecp: str | None = None,
                 energy_unit: str = "ev"):
        if energy_unit not in ("ev", "hartree"):
            raise ValueError(f"energy_unit must be 'ev' or 'hartree', not {energy_unit!r}")
        self._scale = 1.0 / HARTREE_EV if energy_unit == "ev" else 1.0
        super().__init__(path, basis, ecp)
        self._keys = [str(i) for i in range(len(self._handle()))]

    def _open(self):
        import ase.io  # pylint: disable=import-outside-toplevel
        return ase.io.read(self.path, index=":")

    def _read(self, i: int) -> Record:
        atoms = self._handle()[i]
        info = {k.lower(): v for k, v in atoms.info.items()}
        energy = info.get("energy")
        if energy is None and atoms.calc is not None:
            energy = atoms.calc.results.get("energy")
        forces = atoms.calc.results.get("forces") if atoms.calc is not None else None
        if forces is None and "forces" in atoms.arrays:
            forces = atoms.arrays["forces"]
        return self._record(
            key=str(i), elements=atoms.numbers, coords=atoms.positions, fock=None,
            energy=None if energy is None else float(energy) * self._scale,
            forces=None if forces is None else np.asarray(forces) * self._scale,
            charge=int(info.get("charge", 0)), spin=info.get("spin"))


def sqlite_readonly(path: str) -> sqlite3.Connection:
    """A read-only SQLite connection usable from any thread of the process."""
    uri = pathlib.Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


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
        raise ValueError(f"{path} is a directory without data.mdb: not a QH9 LMDB")
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
    from helm_jax.data import readers_sql  # pylint: disable=import-outside-toplevel

    kind = kind or detect_kind(path)
    classes = {"h5": ProjectH5Reader, "omol_csh": OmolCshReader, "qh9": QH9Reader,
               "schnorb": readers_sql.SchNOrbReader, "nabladft": readers_sql.NablaDFTReader,
               "xyz": XYZReader}
    if kind not in classes:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")
    return classes[kind](path, **kw)
