"""nablaDFT Hamiltonian SQLite dbs: wB97X-D/def2-SVP by Psi4."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np

from helm_jax import conventions
from helm_jax.data.readers.base import Reader, require_file, sqlite_readonly
from helm_jax.data.records import Record
from helm_jax.units import BOHR_ANGSTROM


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
