"""Readers of the SQLite-based datasets: SchNOrb MD17 (ASE db) and nablaDFT Hamiltonian dbs.

Both follow :class:`helm_jax.data.readers.Reader`; open them with
:func:`helm_jax.data.readers.open_dataset`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import sqlite3

import numpy as np

from helm_jax import conventions
from helm_jax.units import BOHR_ANGSTROM
from helm_jax.data.readers import (Reader, formula, require_file,
                                   sqlite_readonly)
from helm_jax.data.records import Record

FORCE_UNITS = {"hartree/angstrom": 1.0, "hartree/bohr": 1.0 / BOHR_ANGSTROM}


class SchNOrbReader(Reader):
    """SchNOrb MD17 ASE SQLite dbs (water, ethanol, malondialdehyde, uracil): ORCA PBE/def2-SVP.

    ``row.positions`` are Angstrom, ``row.data['hamiltonian' | 'overlap']`` Eh in ORCA order.
    Units of energy and forces, from SchNOrb's own parser (atomistic-machine-learning/SchNOrb,
    ``src/schnorb/data.py``): the energy is ORCA's ``FINAL SINGLE POINT ENERGY`` (Eh), minus an
    optional ``energy_offset`` and minus the dataset mean (``extract_data.py`` ``sub_mean``),
    both kept in the db metadata; the forces are ORCA's ``CARTESIAN GRADIENT`` (Eh/bohr) times
    ``-1/Bohr`` with ``ase.units.Bohr`` = 0.529 A, i.e. already Eh/Angstrom. Hence the
    defaults below; ``force_unit="hartree/bohr"`` is there for files made another way
    (check with PySCF forces on one frame when unsure).

    Args:
      path: the ``.db`` file.
      basis: PySCF basis of the matrices.
      force_unit: unit of the stored forces, a key of :data:`FORCE_UNITS`.
      absolute_energy: add the metadata's ``mean_energy`` and ``energy_offset`` back, so
        energies are total energies in Eh (False keeps the stored, mean-removed values).
    """

    kind = "schnorb"
    convention = "orca"

    def __init__(self, path: str, basis: str = "def2-svp",
                 force_unit: str = "hartree/angstrom", absolute_energy: bool = True):
        super().__init__(path, basis)
        if force_unit not in FORCE_UNITS:
            raise ValueError(f"force_unit {force_unit!r} is not one of {sorted(FORCE_UNITS)}")
        self._force_factor = FORCE_UNITS[force_unit]
        with contextlib.closing(sqlite_readonly(self.path)) as conn:
            self._ids = [r[0] for r in conn.execute("SELECT id FROM systems ORDER BY id")]
        self._keys = [str(i) for i in self._ids]
        meta = self._handle().metadata if absolute_energy else {}
        self._energy_shift = float(meta.get("mean_energy", 0.0)) + float(
            meta.get("energy_offset", 0.0))

    def _open(self):
        import ase.db  # pylint: disable=import-outside-toplevel

        return ase.db.connect(self.path, type="db")

    def _read(self, i: int) -> Record:
        row = self._handle().get(id=self._ids[i])
        data = row.data
        energy = _data_array(data, "energy")
        forces = _data_array(data, "forces")
        return self._record(
            key=self._keys[i], elements=row.numbers, coords=row.positions,
            fock=_data_array(data, "hamiltonian"), overlap=_data_array(data, "overlap"),
            energy=None if energy is None else float(energy.reshape(-1)[0]) + self._energy_shift,
            forces=None if forces is None else forces * self._force_factor)

    def published_splits(self, seed: int = 0) -> dict[str, np.ndarray]:
        """SchNOrb's split sizes: water 500/500/rest, the others 25,000/500/rest.

        The published indices are not distributed, so the split is drawn with ``seed``.
        """
        sizes = (500, 500, None) if formula(self[0].elements) == "H2O" else (25000, 500, None)
        return self.splits(seed, sizes)


def _data_array(data, name: str) -> np.ndarray | None:
    """A float64 array from ``row.data``; SchNetPack >= 0.3 stores base64 plus shape/dtype."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raw = base64.b64decode(value)
        return np.frombuffer(raw, dtype=data[f"_dtype_{name}"]).reshape(
            data[f"_shape_{name}"]).astype(np.float64)
    return np.asarray(value, dtype=np.float64)


class NablaDFTReader(Reader):
    """nablaDFT Hamiltonian SQLite dbs: wB97X-D/def2-SVP by Psi4.

    Tables ``data(id, Z, R, E, F, H, S, C)`` (int32 / float32 blobs; R bohr, E Eh, F Eh/bohr,
    H, S and the core Hamiltonian C in Eh and Psi4 AO order) and ``basisset(Z, orbitals)``
    (int32 l of each shell, checked against the Psi4 order of :mod:`helm_jax.conventions`).
    Records carry Angstrom and Eh/Angstrom, and C as ``extras['core_hamiltonian']``.

    Args:
      path: the ``.db`` file.
      basis: PySCF basis of the matrices.
      split_file: optional published split: nablaDFT's ``.npz`` (``train_idx``, ``val_idx``,
        ``test_idx``) or a JSON ``{name: [ids]}``; values are ``data.id`` values.
    """

    kind = "nabladft"
    convention = "psi4"

    def __init__(self, path: str, basis: str = "def2-svp", split_file: str | None = None):
        super().__init__(path, basis)
        self.split_file = None if split_file is None else require_file(split_file)
        conn = self._handle()
        self._ids = [r[0] for r in conn.execute("SELECT id FROM data ORDER BY id")]
        self._keys = [str(i) for i in self._ids]
        self._shells = {int(z): tuple(np.frombuffer(o, np.int32).tolist())
                        for z, o in conn.execute("SELECT Z, orbitals FROM basisset")}

    def _open(self) -> sqlite3.Connection:
        return sqlite_readonly(self.path)

    def _read(self, i: int) -> Record:
        row = self._handle().execute("SELECT Z, R, E, F, H, S, C FROM data WHERE id=?",
                                     (self._ids[i],)).fetchone()
        z = np.frombuffer(row[0], np.int32)
        self._check_shells(z, self._keys[i])
        coords = np.frombuffer(row[1], np.float32).reshape(-1, 3) * BOHR_ANGSTROM  # [n, 3] A
        energy = row[2] if row[2] is None or isinstance(row[2], float) else float(
            np.frombuffer(row[2], np.float32)[0])
        forces = None if row[3] is None else np.frombuffer(
            row[3], np.float32).reshape(-1, 3) / BOHR_ANGSTROM  # [n, 3] Eh/A
        h, s, c = (None if b is None else _square(b, self.path, self._keys[i]) for b in row[4:])
        return self._record(key=self._keys[i], elements=z, coords=coords, fock=h, overlap=s,
                            energy=energy, forces=forces,
                            ao_extras=None if c is None else {"core_hamiltonian": c})

    def _check_shells(self, elements: np.ndarray, key: str) -> None:
        for z in set(elements.tolist()):
            stored = self._shells.get(z)
            expected = tuple(conventions.foreign_shell_order(z, self.basis, None, "psi4"))
            if stored is not None and stored != expected:
                raise ValueError(
                    f"{self.path} [{key}]: basisset table gives Z={z} shells l={list(stored)}, "
                    f"but {self.basis} in Psi4 order is l={list(expected)}: another basis?")

    def published_splits(self) -> dict[str, np.ndarray]:
        """The ``split_file`` split (ids mapped to indices), else the file's own split name."""
        if self.split_file is None:
            return super().published_splits()
        if self.split_file.endswith(".npz"):
            with np.load(self.split_file) as f:
                raw = {k.removesuffix("_idx"): f[k] for k in f.files}
        else:
            with open(self.split_file) as fh:
                raw = json.load(fh)
        position = {db_id: i for i, db_id in enumerate(self._ids)}
        out = {}
        for name, ids in raw.items():
            missing = [int(x) for x in ids if int(x) not in position]
            if missing:
                raise ValueError(f"{self.split_file}: split {name!r} names ids {missing[:5]} "
                                 f"not in {self.path}: a split file of another db?")
            out[name] = np.array([position[int(x)] for x in ids], np.int64)
        return out


def _square(blob: bytes, path: str, key: str) -> np.ndarray:
    m = np.frombuffer(blob, np.float32).astype(np.float64)
    side = math.isqrt(m.size)
    if side * side != m.size:
        raise ValueError(f"{path} [{key}]: matrix blob of {m.size} float32 is not square")
    return m.reshape(side, side)

