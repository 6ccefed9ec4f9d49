"""QH9 LMDB databases (``QH9Stable.lmdb`` / ``QH9Dynamic.lmdb``): B3LYP/def2-SVP by PySCF."""

from __future__ import annotations

import math
import os
import pickle
from typing import Any

import numpy as np

from helm_jax.data.readers.base import Reader
from helm_jax.data.records import Record

_LMDB_ENVS: dict[tuple[int, str], Any] = {}  # (pid, real path) -> open lmdb.Environment


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
