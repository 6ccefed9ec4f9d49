"""The project's HDF5 label format ("helm_jax.h5/v1") and a streaming reader.

Layout (OMol_CSH-like, so one reader serves both):

    file attrs: format="helm_jax.h5/v1", method (xc name or "HF"), basis, ecp ("" if none),
                grid_level, density_fit, conv_tol, units (JSON), pyscf_version,
                helm_jax_version, numpy_version, h5py_version (+ labeller extras)
    /{index:07d}/                       one group per structure, index = input order
        elements  int32   [n]           atomic numbers
        coords    float64 [n, 3]        Angstrom
        fock      float64 [N(N+1)/2]    packed upper triangle incl. diagonal, row major,
                                        Eh, PySCF AO order (N = number of AOs)
        overlap   float64 [N(N+1)/2]    same packing
        energy    float64 []            total energy, Eh
        forces    float64 [n, 3]        optional, Eh/Angstrom
        ao_*      float64 [..., N(N+1)/2] optional symmetric AO matrices, packed like fock
                                        (ao_dipole [3, ...]: dipole integrals, bohr)
        <other>   float64 [...]         optional per-structure arrays (dipole_origin,
                                        mo_energy, dipole, polarizability, targets_*, see
                                        helm_jax/data/reference_targets.py)
        attrs: charge, spin (2S), n_electrons, converged, scf_cycles, source,
               complete=True (written last)

Optional datasets are read into ``Record.extras`` (``ao_*`` unpacked to ``[..., N, N]``);
files without them read as before.

OMol_CSH files have only elements/coords/fock and attrs charge/spin: no overlap, energy,
`format` or `complete`. A group lacking `complete` is skipped only in the project's own
files (it was being written when the writer died); in foreign files it is complete.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import h5py
import numpy as np

from helm_jax.data.records import Record

FORMAT = "helm_jax.h5/v1"
UNITS = {"coords": "angstrom", "fock": "hartree", "overlap": "hartree",
         "energy": "hartree", "forces": "hartree/angstrom", "ao_dipole": "bohr",
         "dipole_origin": "bohr", "mo_energy": "hartree", "dipole": "e bohr",
         "polarizability": "e^2 bohr^2 / hartree"}
CORE_DATASETS = ("elements", "coords", "fock", "overlap", "energy", "forces")
AO_PREFIX = "ao_"
SIDECAR_SUFFIX = ".keys.json"


def group_key(index: int) -> str:
    """Group name of the structure at position `index` of the input ("0000017")."""
    return f"{index:07d}"


def n_from_packed_len(length: int) -> int:
    """Matrix size N of a packed upper triangle of `length` = N (N + 1) / 2 entries.

    Raises:
        ValueError: if `length` is not a triangular number.
    """
    n = (math.isqrt(8 * int(length) + 1) - 1) // 2
    if length < 1 or n * (n + 1) // 2 != length:
        raise ValueError(f"packed length {length} is not a triangular number N(N+1)/2: the "
                         "array is not a packed upper triangle (truncated or wrong dataset)")
    return n


def pack_upper(h: np.ndarray) -> np.ndarray:
    """Packs the upper triangle (incl. diagonal) of a square matrix, row major.

    Args:
        h: [N, N] matrix.

    Returns:
        [N (N + 1) / 2] vector h[0,0], h[0,1], ..., h[0,N-1], h[1,1], ...
    """
    h = np.asarray(h)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"pack_upper needs a square matrix, got shape {list(h.shape)}")
    return h[np.triu_indices(h.shape[0])]


def unpack_upper(vec: np.ndarray, n: int | None = None) -> np.ndarray:
    """Inverse of `pack_upper`: the full symmetric matrix.

    Args:
        vec: [N (N + 1) / 2] packed upper triangle.
        n: expected N (checked); None infers it from the length.

    Returns:
        [N, N] symmetric matrix.
    """
    vec = np.asarray(vec)
    if vec.ndim != 1:
        raise ValueError(f"packed triangle must be 1-D, got shape {list(vec.shape)}")
    size = n_from_packed_len(vec.shape[0])
    if n is not None and n != size:
        raise ValueError(f"packed length {vec.shape[0]} is a {size}x{size} matrix, "
                         f"expected {n}x{n}")
    h = np.zeros((size, size), dtype=vec.dtype)  # [N, N]
    rows, cols = np.triu_indices(size)
    h[rows, cols] = vec
    h[cols, rows] = vec
    return h


def software_versions() -> dict[str, str]:
    """Versions of the libraries that produce a file, as file attrs."""
    import pyscf  # pylint: disable=import-outside-toplevel
    import helm_jax  # pylint: disable=import-outside-toplevel

    return {"pyscf_version": pyscf.__version__, "helm_jax_version": helm_jax.__version__,
            "numpy_version": np.__version__, "h5py_version": h5py.__version__}


def write_file_attrs(f: h5py.File, level: dict) -> None:
    """Writes the file attrs: `level` (method, basis, ...), format, units and versions."""
    for name, value in {**level, "format": FORMAT, "units": json.dumps(UNITS),
                        **software_versions()}.items():
        f.attrs[name] = value


def write_structure(parent: h5py.Group, key: str, *, elements, coords, fock, overlap,
                    energy: float, charge: int, spin: int, n_electrons: int,
                    converged: bool, scf_cycles: int, source: str, forces=None,
                    extras: dict | None = None) -> None:
    """Writes one structure group; `complete=True` is the last thing written.

    Args:
        parent: file or group to create the group in.
        key: group name, `group_key(index)`.
        elements: [n] atomic numbers.
        coords: [n, 3] Angstrom.
        fock: [N, N] Fock matrix (Eh, PySCF AO order); stored packed.
        overlap: [N, N] AO overlap; stored packed.
        energy: total energy (Eh).
        charge: total charge.
        spin: 2S.
        n_electrons: electrons in the calculation (ECP cores excluded).
        converged: whether the SCF converged.
        scf_cycles: SCF iterations used.
        source: input tag, e.g. "ethanol_train_01.xyz:17".
        forces: optional [n, 3] Eh/Angstrom.
        extras: optional named arrays; `ao_*` ones are [..., N, N] symmetric and stored packed.
    """
    g = parent.create_group(key)
    g.create_dataset("elements", data=np.asarray(elements, dtype=np.int32))
    g.create_dataset("coords", data=np.asarray(coords, dtype=np.float64))
    g.create_dataset("fock", data=pack_upper(np.asarray(fock, dtype=np.float64)))
    g.create_dataset("overlap", data=pack_upper(np.asarray(overlap, dtype=np.float64)))
    g.create_dataset("energy", data=np.float64(energy))
    if forces is not None:
        g.create_dataset("forces", data=np.asarray(forces, dtype=np.float64))
    for name, value in (extras or {}).items():
        value = np.asarray(value, dtype=np.float64)
        if name.startswith(AO_PREFIX):
            value = value[..., *np.triu_indices(value.shape[-1])]
        g.create_dataset(name, data=value)
    g.attrs.update({"charge": int(charge), "spin": int(spin), "n_electrons": int(n_electrons),
                    "converged": bool(converged), "scf_cycles": int(scf_cycles),
                    "source": str(source)})
    g.attrs["complete"] = True


def open_h5(path: str) -> h5py.File:
    """Opens an HDF5 file read-only with clear errors for missing and corrupt files."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"HDF5 file {path!r} does not exist: check the path, or create "
                                "it with `python -m data_prep.label --out ...`")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(_corrupt_message(path, err)) from err


def _corrupt_message(path: str, err: Exception) -> str:
    return (f"{path!r} is not a readable HDF5 file (corrupt or truncated: {err}). If "
            "data_prep.label wrote it, rerun the same label command (it rebuilds the file from "
            f"{path}.parts/ when present) or delete it and relabel; otherwise copy it again.")


#: Records read from HDF5 files are the project's single record type.
H5Record = Record


class H5Dataset:
    """Random-access, streaming reader of project and OMol_CSH HDF5 files.

    Only the group names (and, for project files, the `complete`/`converged` flags) are
    listed, once, and cached in `<path>.keys.json`, which is rebuilt when the file's
    size or mtime changes. Groups are read one at a time on `__getitem__`. The file handle
    is opened lazily per process, so the object can be pickled into loader workers.

    Args:
        path: HDF5 file.
        expected_nao: optional N of the Fock matrix, as an int or a callable
            `f(elements [n]) -> int` (e.g. from the basis); a mismatch raises ValueError.
    """

    def __init__(self, path: str, expected_nao: int | Callable[[np.ndarray], int] | None = None):
        self.path = path
        self.expected_nao = expected_nao
        self._file, self._pid = None, None
        f = self._handle()
        self.attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                      for k, v in f.attrs.items()}
        self.is_native = self.attrs.get("format") == FORMAT
        self._keys, self._converged = self._load_index(f)

    @property
    def keys(self) -> list[str]:
        """Group names of the complete structures, in file order."""
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, i: int) -> H5Record:
        return self.read(self._keys[i])

    def converged_indices(self) -> np.ndarray:
        """int64 [m] positions (0..len-1) whose SCF converged; use these for splits."""
        return np.flatnonzero(self._converged)

    def read(self, key: str) -> H5Record:
        """Reads the group `key` (see `H5Record`)."""
        f = self._handle()
        if key not in f:
            raise ValueError(f"{self.path}: group {key!r} is missing; if the key cache "
                             f"{self.path}{SIDECAR_SUFFIX} is stale, delete it")
        g = f[key]
        try:
            missing = [name for name in ("elements", "coords", "fock") if name not in g]
            if missing:
                raise ValueError(f"{self.path}/{key}: required dataset(s) {missing} missing; "
                                 "the file is not in helm_jax.h5 / OMol_CSH layout")
            elements = np.asarray(g["elements"][()], dtype=np.int32)  # [n]
            coords = np.asarray(g["coords"][()], dtype=np.float64).reshape(-1, 3)  # [n, 3]
            nao = self._expected_nao(elements)
            fock = self._unpack(g, "fock", key, nao)
            overlap = self._unpack(g, "overlap", key, fock.shape[0]) if "overlap" in g else None
            energy = float(g["energy"][()]) if "energy" in g else None
            forces = np.asarray(g["forces"][()], np.float64) if "forces" in g else None
            extras = {name: self._extra(g, name, fock.shape[0]) for name in g
                      if name not in CORE_DATASETS}
            attrs = g.attrs
            return H5Record(elements=elements, coords=coords, fock=fock, overlap=overlap,
                            energy=energy, forces=forces, charge=int(attrs.get("charge", 0)),
                            spin=int(attrs.get("spin", 0)),
                            converged=bool(attrs.get("converged", True)), key=key,
                            extras=extras)
        except OSError as err:
            raise ValueError(_corrupt_message(self.path, err)) from err

    def close(self) -> None:
        """Closes the file handle (it reopens on the next read)."""
        if self._file is not None:
            self._file.close()
        self._file, self._pid = None, None

    def __enter__(self) -> "H5Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open_h5(self.path), os.getpid()
        return self._file

    def _expected_nao(self, elements: np.ndarray) -> int | None:
        if callable(self.expected_nao):
            return int(self.expected_nao(elements))
        return self.expected_nao

    def _unpack(self, g: h5py.Group, name: str, key: str, nao: int | None) -> np.ndarray:
        packed = np.asarray(g[name][()], dtype=np.float64)  # [N (N + 1) / 2]
        if packed.ndim != 1:
            raise ValueError(f"{self.path}/{key}/{name}: expected a packed 1-D upper triangle, "
                             f"got shape {list(packed.shape)}")
        try:
            n = n_from_packed_len(packed.shape[0])
        except ValueError as err:
            raise ValueError(f"{self.path}/{key}/{name}: {err}") from err
        if nao is not None and n != nao:
            raise ValueError(f"{self.path}/{key}/{name}: packed size is a {n}x{n} matrix but the "
                             f"basis of these elements has {nao} AOs; wrong basis or the file "
                             "is from another code's basis (convert it first)")
        return unpack_upper(packed, n)

    def _extra(self, g: h5py.Group, name: str, nao: int) -> np.ndarray:
        """An optional dataset; `ao_*` ones unpacked to [..., N, N]."""
        value = np.asarray(g[name][()], dtype=np.float64)
        if not name.startswith(AO_PREFIX):
            return value
        try:
            mats = [unpack_upper(v, nao) for v in value.reshape(-1, value.shape[-1])]
        except ValueError as err:
            raise ValueError(f"{self.path}{g.name}/{name}: {err}") from err
        return np.stack(mats).reshape(value.shape[:-1] + (nao, nao))

    def _load_index(self, f: h5py.File) -> tuple[list[str], np.ndarray]:
        """Group names and converged flags [len], from the sidecar when it is fresh."""
        stat = os.stat(self.path)
        stamp = [stat.st_size, stat.st_mtime_ns]
        sidecar = self.path + SIDECAR_SUFFIX
        cached = None
        try:
            with open(sidecar) as fh:
                cached = json.load(fh)
        except (OSError, ValueError):
            pass
        if isinstance(cached, dict) and cached.get("stamp") == stamp:
            return cached["keys"], np.asarray(cached["converged"], dtype=bool)
        try:
            keys, converged = [], []
            for key in f.keys():
                attrs = f[key].attrs if self.is_native else {}
                if self.is_native and not bool(attrs.get("complete", False)):
                    continue  # half-written group of a killed writer
                keys.append(key)
                converged.append(bool(attrs.get("converged", True)))
        except OSError as err:
            raise ValueError(_corrupt_message(self.path, err)) from err
        if cached is None or isinstance(cached, dict):  # never overwrite a foreign list cache
            tmp = f"{sidecar}.tmp.{os.getpid()}"
            try:
                with open(tmp, "w") as fh:
                    json.dump({"stamp": stamp, "keys": keys, "converged": converged}, fh)
                os.replace(tmp, sidecar)
            except OSError:
                pass  # read-only directory: keep the index in memory only
        return keys, np.asarray(converged, dtype=bool)
