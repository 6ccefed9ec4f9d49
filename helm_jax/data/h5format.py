"""The project's HDF5 label format ("helm_jax.h5/v1") and a streaming reader.

Layout (OMol_CSH-like, so one reader serves both):

    file attrs: format="helm_jax.h5/v1", method (xc name or "HF"), basis, ecp ("" if none),
                grid_level, density_fit, conv_tol, units (JSON), pyscf_version,
                helm_jax_version, numpy_version, h5py_version (+ labeller extras;
                unrestricted=True only when every structure was forced to UKS/UHF)
    /{index:07d}/                       one group per structure, index = input order
        elements  int32   [n]           atomic numbers
        coords    float64 [n, 3]        Angstrom
        fock      float64 [N(N+1)/2]    packed upper triangle incl. diagonal, row major,
                                        Eh, PySCF AO order (N = number of AOs); the
                                        alpha Fock matrix of an unrestricted label
        fock_beta float64 [N(N+1)/2]    only for unrestricted (UKS/UHF) labels: the beta
                                        Fock matrix, packed like fock
        fock_csr/                       instead of fock: a block-sparse Fock matrix (large
                                        predicted structures, helm_jax.sparse_hamiltonian)
                                        in scipy CSR form:
            data     float64 [nnz]      stored entries, row by row (Eh)
            indices  int32|int64 [nnz]  their columns (sorted within each row)
            indptr   int64   [N + 1]    row r is data[indptr[r]:indptr[r + 1]]
            shape    int64   [2]        (N, N)
        fock_beta_csr/                  instead of fock_beta: the beta one, the same way
        overlap   float64 [N(N+1)/2]    same packing as fock (optional beside fock_csr:
                                        omitted for structures too large for a dense overlap)
        energy    float64 []            total energy, Eh
        forces    float64 [n, 3]        optional, Eh/Angstrom
        ao_*      float64 [..., N(N+1)/2] optional symmetric AO matrices, packed like fock
                                        (ao_dipole [3, ...]: dipole integrals, bohr)
        <other>   float64 [...]         optional per-structure arrays (dipole_origin,
                                        mo_energy ([K], or [2, K] alpha/beta rows for
                                        unrestricted labels), dipole, polarizability,
                                        targets_*, see helm_jax/data/reference_targets.py)
        attrs: charge, spin (2S), n_electrons, converged, scf_cycles, source,
               checksums (JSON {dataset: crc32 hex, "@attrs": crc32 hex}),
               complete=True (written last)

`checksums` holds, per dataset written by `write_structure`, the CRC32 of its dtype, shape
and bytes (`checksum`), and under "@attrs" that of the label attrs above; `H5Dataset`
recomputes them on read and raises `DataError` on a mismatch. Groups written before
checksums existed (no attr) read unverified; datasets added to a group afterwards (e.g.
`mo_energy` by helm_jax.predict) are not covered.

Optional datasets are read into ``Record.extras`` (``ao_*`` unpacked to ``[..., N, N]``);
files without them read as before.

Sparse Fock matrices (``fock_csr``, ``fock_beta_csr``; written by `write_structure` when given
a scipy sparse matrix, e.g. by helm_jax.predict.write_predictions for structures above
``Predictor.sparse_above_ao`` AOs) read as ``scipy.sparse.csr_matrix`` in ``Record.fock`` /
``Record.fock_beta``, dense packed ones as arrays, as the file has them. Their datasets are
covered by the checksums (names ``fock_csr/data`` ...). Files without them are unchanged.

A structure holds a spin-resolved label exactly when its group has `fock_beta`; restricted
labels (and every file written before open shells were supported) have none, and read with
`Record.fock_beta = None`. `fock_beta` is verified like `fock` (checksum, dtype, AO count).

OMol_CSH files have only elements/coords/fock and attrs charge/spin: no overlap, energy,
`format` or `complete`. Spin-resolved OMol_CSH-style groups are read in either of two
layouts: `fock` of shape [2, N(N+1)/2] (row 0 alpha, row 1 beta, each packed as above), or
`fock` [N(N+1)/2] plus `fock_beta` [N(N+1)/2] as in the project's files. A group lacking
`complete` is skipped only in the project's own files (it was being written when the writer
died); in foreign files it is complete.

Periodic structures (docs/periodic.md; written by `write_periodic_structure`, labelled by
helm_jax/data/labelling_pbc.py) have no `fock`/`overlap`; instead:

    file attrs: periodic=True, kmesh, pseudo, ke_cutoff, density_fit, ... (the settings)
    /{index:07d}/
        elements          int32   [n]
        coords            float64 [n, 3]     Angstrom, as labelled (not wrapped)
        cell              float64 [3, 3]     Angstrom, rows = lattice vectors
        pbc               uint8   [3]        1 = periodic axis
        kmesh             int32   [3]        Monkhorst-Pack mesh (absent: real-space source)
        n_ao_per_atom     int32   [n]        AOs of each atom (PySCF order, file's basis)
        pair_atoms        int32   [P, 2]     (i, j): i in the home cell, j in cell T
        pair_translations int32   [P, 3]     T (0 along non-periodic axes)
        block_offsets     int64   [P + 1]    pair p's block is blocks[off[p]:off[p+1]]
        fock_blocks       float64 [sum n_i n_j]  raw H_ij(T), row major [n_i, n_j], Eh
        overlap_blocks    float64 [sum n_i n_j]  S_ij(T)
        pair_weights      float64 [P]        Bloch-sum weight (1 / tied multiplicity)
        alias_distance    float64 [P]        nearest image summed into the block (A)
        energy            float64 []         total energy per cell, Eh
        fermi, homo, lumo, gap  float64 []   optional, Eh (docs/periodic.md)
        path_kpts         float64 [K, 3]     optional (labeller --band_path=K): fractional
                                             k-points of a high-symmetry path
        path_bands        float64 [K, nao]   PySCF's mf.get_bands there (Eh, ascending,
                                             NaN where canonical orthogonalisation dropped
                                             vectors); both or neither
        attrs: as for molecules (charge, spin, ..., checksums, complete) plus periodic=True
               (and, from the labeller, n_pairs_beyond_bvk: pairs within --pbc_cutoff that a
               bigger k-mesh would give)

`H5Dataset.read` returns such a group as a `Record` with `cell`, `pbc` and `periodic`
(`PeriodicLabels`), `fock = overlap = None`. The molecular reader
(`helm_jax.data.readers.open_dataset(path)`) refuses periodic files with a `DataError` that
says how to open them (`periodic=True`); molecular files read exactly as before.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from typing import Callable, Mapping

import h5py
import numpy as np
import scipy.sparse as sp

from helm_jax.data.records import LIBRARY_ERRORS, DataError, Record

FORMAT = "helm_jax.h5/v1"
UNITS = {"coords": "angstrom", "fock": "hartree", "fock_beta": "hartree",
         "overlap": "hartree", "energy": "hartree", "forces": "hartree/angstrom",
         "ao_dipole": "bohr", "dipole_origin": "bohr", "mo_energy": "hartree", "dipole": "e bohr",
         "polarizability": "e^2 bohr^2 / hartree"}
CORE_DATASETS = ("elements", "coords", "fock", "fock_beta", "overlap", "energy", "forces")
#: Groups of a block-sparse Fock matrix in CSR form, and their datasets.
SPARSE_SUFFIX = "_csr"
SPARSE_GROUPS = ("fock" + SPARSE_SUFFIX, "fock_beta" + SPARSE_SUFFIX)
CSR_DATASETS = ("data", "indices", "indptr", "shape")
AO_PREFIX = "ao_"
SIDECAR_SUFFIX = ".helm_jax_index.json"  # never the reference's "<file>.keys.json" list
CHECKSUM_ATTR = "checksums"
ATTRS_CHECKSUM_KEY = "@attrs"
LABEL_ATTRS = ("charge", "spin", "n_electrons", "converged", "scf_cycles", "source")
PERIODIC_ATTR = "periodic"  # file and group attr of periodic structures
#: dtype of every dataset of a periodic group (write_periodic_structure writes these only).
PERIODIC_DATASETS = {"elements": np.int32, "coords": np.float64, "cell": np.float64,
                     "pbc": np.uint8, "kmesh": np.int32, "n_ao_per_atom": np.int32,
                     "pair_atoms": np.int32, "pair_translations": np.int32,
                     "block_offsets": np.int64, "fock_blocks": np.float64,
                     "overlap_blocks": np.float64, "pair_weights": np.float64,
                     "alias_distance": np.float64, "energy": np.float64,
                     "fermi": np.float64, "homo": np.float64, "lumo": np.float64,
                     "gap": np.float64, "path_kpts": np.float64, "path_bands": np.float64}


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


def csr_datasets(name: str, matrix) -> dict[str, np.ndarray]:
    """The datasets ``{name}_csr/{data,indices,indptr,shape}`` of a sparse square matrix.

    Args:
        name: ``"fock"`` or ``"fock_beta"``.
        matrix: a scipy sparse matrix ``[N, N]`` (converted to canonical CSR: sorted column
            indices, no duplicates).

    Returns:
        ``{path: array}``: float64 data, int32 indices (int64 beyond 2^31 - 1 columns),
        int64 indptr and shape.
    """
    csr = sp.csr_matrix(matrix)
    if csr.shape[0] != csr.shape[1]:
        raise ValueError(f"{name} must be a square [N, N] matrix, got shape {list(csr.shape)}")
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()  # also sorts the indices
    idx = np.int32 if csr.shape[1] < np.iinfo(np.int32).max else np.int64
    group = name + SPARSE_SUFFIX
    return {f"{group}/data": np.asarray(csr.data, np.float64),
            f"{group}/indices": np.asarray(csr.indices, idx),
            f"{group}/indptr": np.asarray(csr.indptr, np.int64),
            f"{group}/shape": np.asarray(csr.shape, np.int64)}


def checksum(value) -> str:
    """CRC32 (8 hex digits) of an array's dtype, shape and bytes (little-endian, C order).

    A file rewritten with another dtype or shape, or with any byte changed, gets another
    checksum. Costs about 1 ms per 8 MB on one core.
    """
    a = np.ascontiguousarray(value)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype.kind not in "biuf":
        return "non-numeric"  # never written by write_structure: always a mismatch
    crc = zlib.crc32(f"{a.dtype.str}{list(a.shape)}".encode())
    return f"{zlib.crc32(a.reshape(-1).view(np.uint8), crc):08x}"


def attrs_checksum(attrs: Mapping) -> str:
    """CRC32 (8 hex digits) of the label attrs `LABEL_ATTRS` of a structure group."""
    values = {}
    for name in LABEL_ATTRS:
        v = attrs.get(name)
        v = v.item() if isinstance(v, np.generic) else v
        values[name] = v.decode() if isinstance(v, bytes) else v
    return f"{zlib.crc32(json.dumps(values, sort_keys=True).encode()):08x}"


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
                    extras: dict | None = None, checksums: bool = True,
                    fock_beta=None) -> None:
    """Writes one structure group; `complete=True` is the last thing written.

    Args:
        parent: file or group to create the group in.
        key: group name, `group_key(index)`.
        elements: [n] atomic numbers.
        coords: [n, 3] Angstrom.
        fock: [N, N] Fock matrix (Eh, PySCF AO order); stored packed. The alpha Fock matrix
            of an unrestricted label. A scipy sparse matrix is stored as CSR (`fock_csr`,
            `csr_datasets`) instead.
        overlap: [N, N] AO overlap; stored packed. None (no overlap stored) only beside a
            sparse `fock`, for structures too large for a dense overlap.
        energy: total energy (Eh).
        charge: total charge.
        spin: 2S.
        n_electrons: electrons in the calculation (ECP cores excluded).
        converged: whether the SCF converged.
        scf_cycles: SCF iterations used.
        source: input tag, e.g. "ethanol_train_01.xyz:17".
        forces: optional [n, 3] Eh/Angstrom.
        extras: optional named arrays; `ao_*` ones are [..., N, N] symmetric and stored packed.
        checksums: store the `checksums` attr (False only to measure its cost or to make
            files as written before it existed).
        fock_beta: optional [N, N] beta Fock matrix of an unrestricted label, stored packed
            as `fock_beta` (as `fock_beta_csr` if it is a scipy sparse matrix); None
            (restricted labels) writes no such dataset.
    """
    def matrix(name: str, value) -> dict[str, np.ndarray]:
        if sp.issparse(value):
            return csr_datasets(name, value)
        return {name: pack_upper(np.asarray(value, dtype=np.float64))}

    if overlap is None and not sp.issparse(fock):
        raise ValueError("overlap=None is only allowed beside a sparse fock (a structure too "
                         "large for a dense overlap): pass the [N, N] AO overlap")
    data = {"elements": np.asarray(elements, dtype=np.int32),
            "coords": np.asarray(coords, dtype=np.float64),
            **matrix("fock", fock),
            "energy": np.asarray(energy, dtype=np.float64)}
    if overlap is not None:
        data["overlap"] = pack_upper(np.asarray(overlap, dtype=np.float64))
    if fock_beta is not None:
        if _shape(fock_beta) != _shape(fock):
            raise ValueError(f"fock_beta has shape {list(_shape(fock_beta))}, fock "
                             f"{list(_shape(fock))}: both must be the same [N, N]")
        data.update(matrix("fock_beta", fock_beta))
    if forces is not None:
        data["forces"] = np.asarray(forces, dtype=np.float64)
    for name, value in (extras or {}).items():
        value = np.asarray(value, dtype=np.float64)
        if name.startswith(AO_PREFIX):
            value = value[..., *np.triu_indices(value.shape[-1])]
        data[name] = value
    _write_group(parent, key, data, checksums, charge=int(charge), spin=int(spin),
                 n_electrons=int(n_electrons), converged=bool(converged),
                 scf_cycles=int(scf_cycles), source=str(source))


def _shape(matrix) -> tuple[int, ...]:
    """Shape of a dense array(-like) or a scipy sparse matrix."""
    return tuple(matrix.shape) if sp.issparse(matrix) else np.shape(matrix)


def _write_group(parent: h5py.Group, key: str, data: dict, checksums: bool, *,
                 extra_attrs: dict | None = None, **attrs) -> None:
    """Writes one structure group: its datasets, attrs, checksums, then ``complete``."""
    g = parent.create_group(key)
    for name, value in data.items():
        g.create_dataset(name, data=value)
    if checksums:
        sums = {name: checksum(value) for name, value in data.items()}
        sums[ATTRS_CHECKSUM_KEY] = attrs_checksum(attrs)
        attrs[CHECKSUM_ATTR] = json.dumps(sums)
    g.attrs.update(attrs)
    g.attrs.update(extra_attrs or {})
    g.attrs["complete"] = True


def write_periodic_structure(parent: h5py.Group, key: str, *, elements, coords, cell, pbc,
                             labels, energy: float, charge: int, spin: int,
                             n_electrons: int, converged: bool, scf_cycles: int, source: str,
                             checksums: bool = True) -> None:
    """Writes one periodic structure group (layout in the module docstring).

    Args:
        parent: file or group to create the group in.
        key: group name, `group_key(index)`.
        elements: [n] atomic numbers; coords: [n, 3] Angstrom.
        cell: [3, 3] Angstrom, rows = lattice vectors; pbc: [3] periodic axes.
        labels: `helm_jax.data.records.PeriodicLabels` (blocks, pairs, k-mesh, Fermi level).
        energy: total energy per cell (Eh).
        charge, spin, n_electrons, converged, scf_cycles, source: as `write_structure`.
        checksums: store the `checksums` attr.
    """
    off = np.asarray(labels.block_offsets, np.int64)
    data = {"elements": np.asarray(elements, np.int32),
            "coords": np.asarray(coords, np.float64),
            "cell": np.asarray(cell, np.float64).reshape(3, 3),
            "pbc": np.asarray(pbc, bool).reshape(3).astype(np.uint8),
            "n_ao_per_atom": np.asarray(labels.n_ao_per_atom, np.int32),
            "pair_atoms": np.asarray(labels.pairs, np.int32).reshape(-1, 2),
            "pair_translations": np.asarray(labels.translations, np.int32).reshape(-1, 3),
            "block_offsets": off,
            "fock_blocks": np.asarray(labels.fock_blocks, np.float64),
            "pair_weights": np.asarray(labels.weight, np.float64),
            "alias_distance": np.asarray(labels.alias_distance, np.float64),
            "energy": np.asarray(energy, np.float64)}
    if labels.overlap_blocks is not None:
        data["overlap_blocks"] = np.asarray(labels.overlap_blocks, np.float64)
    if labels.kmesh is not None:
        data["kmesh"] = np.asarray(labels.kmesh, np.int32).reshape(3)
    for name in ("fermi", "homo", "lumo", "gap"):
        if getattr(labels, name) is not None:
            data[name] = np.asarray(getattr(labels, name), np.float64)
    path_kpts, path_bands = getattr(labels, "path_kpts", None), getattr(labels, "path_bands",
                                                                        None)
    if (path_kpts is None) != (path_bands is None):
        raise ValueError("path_kpts and path_bands go together: give both or neither")
    if path_kpts is not None:
        data["path_kpts"] = np.asarray(path_kpts, np.float64).reshape(-1, 3)
        data["path_bands"] = np.asarray(path_bands, np.float64)
        nao = int(np.sum(labels.n_ao_per_atom))
        if data["path_bands"].shape != (data["path_kpts"].shape[0], nao):
            raise ValueError(f"path_bands has shape {list(data['path_bands'].shape)}, expected "
                             f"[{data['path_kpts'].shape[0]}, {nao}] (k-points, AOs)")
    if off[-1] != data["fock_blocks"].shape[0]:
        raise ValueError(f"block_offsets end at {off[-1]} but fock_blocks has "
                         f"{data['fock_blocks'].shape[0]} entries")
    _write_group(parent, key, data, checksums, extra_attrs={PERIODIC_ATTR: True},
                 charge=int(charge), spin=int(spin), n_electrons=int(n_electrons),
                 converged=bool(converged), scf_cycles=int(scf_cycles), source=str(source))


def open_h5(path: str) -> h5py.File:
    """Opens an HDF5 file read-only with clear errors for missing and corrupt files."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"HDF5 file {path!r} does not exist: check the path, or create "
                                "it with `python -m data_prep.label --out ...`")
    try:
        return h5py.File(path, "r")
    except LIBRARY_ERRORS as err:
        raise DataError(_corrupt_message(path, err)) from err


def _corrupt_message(path: str, err: Exception) -> str:
    return (f"{path!r} is not a readable HDF5 file (corrupt or truncated: {err}). If "
            "data_prep.label wrote it, rerun the same label command (it rebuilds the file from "
            f"{path}.parts/ when present) or delete it and relabel; otherwise copy it again.")


#: Records read from HDF5 files are the project's single record type.
H5Record = Record


class H5Dataset:
    """Random-access, streaming reader of project and OMol_CSH HDF5 files.

    Only the group names (and, for project files, the `complete`/`converged` flags) are
    listed, once, and cached in `<path>.helm_jax_index.json`, which is rebuilt when the file's
    size or mtime changes. Groups are read one at a time on `__getitem__`. The file handle
    is opened lazily per process, so the object can be pickled into loader workers.

    Args:
        path: HDF5 file.
        expected_nao: optional N of the Fock matrix, as an int or a callable
            `f(elements [n]) -> int` (e.g. from the basis); a mismatch raises DataError.
        verify: compare each group's stored checksums (if any) with its data on read.
    """

    def __init__(self, path: str, expected_nao: int | Callable[[np.ndarray], int] | None = None,
                 verify: bool = True):
        self.path = path
        self.expected_nao = expected_nao
        self.verify = verify
        self._file, self._pid = None, None
        f = self._handle()
        try:
            self.attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                          for k, v in f.attrs.items()}
        except LIBRARY_ERRORS as err:
            raise DataError(_corrupt_message(self.path, err)) from err
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
        """Reads the group `key` (see `H5Record`).

        Raises:
            DataError: the group is missing, corrupt, fails its checksums, or holds datasets
                of the wrong kind, dtype or shape.
        """
        f = self._handle()
        where = f"{self.path}/{key}"
        try:
            if key not in f or not isinstance(f[key], h5py.Group):
                raise DataError(f"{self.path}: group {key!r} is missing; if the key cache "
                                f"{self.path}{SIDECAR_SUFFIX} is stale, delete it")
            g = f[key]
            raw = self._raw(g, where)
            if self.is_native and "fock_blocks" in raw:
                if self.verify:
                    self._verify(g, raw, where)
                return self._periodic_record(g, raw, where, key)
            if self.is_native:  # write_structure writes these dtypes only
                for name, value in raw.items():
                    want = (np.int32 if name == "elements" else np.float64
                            if name in CORE_DATASETS or name.startswith(AO_PREFIX) else None)
                    if want is not None and value.dtype != want:
                        raise DataError(f"{where}/{name}: dtype {value.dtype}, expected "
                                        f"{np.dtype(want)}: the group was rewritten by another "
                                        "tool or damaged; relabel it")
            if self.verify:
                self._verify(g, raw, where)
            sparse_fock = any(name.startswith(SPARSE_GROUPS[0] + "/") for name in raw)
            if sparse_fock and "fock" in raw:
                raise DataError(f"{where}: both a dense fock and a {SPARSE_GROUPS[0]} group: "
                                "the Fock matrix is ambiguous; the group is damaged")
            # A sparse Fock matrix may come without an overlap (too large for a dense one).
            required = ("elements", "coords") + (() if sparse_fock else ("fock",)) + (
                ("energy",) + (() if sparse_fock else ("overlap",)) if self.is_native else ())
            missing = [name for name in required if name not in raw]
            if missing:
                raise DataError(f"{where}: required dataset(s) {missing} missing; the file is "
                                "not in helm_jax.h5 / OMol_CSH layout, or the group is damaged")
            elements = raw["elements"]
            if elements.ndim != 1 or np.any(elements != np.round(elements)):
                raise DataError(f"{where}/elements: expected [n] integer atomic numbers, got "
                                f"shape {list(elements.shape)} dtype {elements.dtype}")
            elements = elements.astype(np.int32)  # [n]
            coords = self._shaped(raw["coords"], (len(elements), 3), f"{where}/coords")
            nao = self._expected_nao(elements)
            sparse_beta = any(name.startswith(SPARSE_GROUPS[1] + "/") for name in raw)
            if sparse_beta and "fock_beta" in raw:
                raise DataError(f"{where}: both a dense fock_beta and a {SPARSE_GROUPS[1]} "
                                "group: the beta Fock matrix is ambiguous; the group is "
                                "damaged")
            if sparse_fock:
                fock = self._csr(raw, "fock", where, nao)
                packed_beta = raw.get("fock_beta")
            else:
                packed_fock, packed_beta = raw["fock"], raw.get("fock_beta")
                if not self.is_native and packed_fock.ndim == 2 and packed_fock.shape[0] == 2:
                    if packed_beta is not None or sparse_beta:
                        raise DataError(f"{where}: both a [2, ...] fock (alpha, beta) and a "
                                        "fock_beta dataset: the beta Fock matrix is ambiguous")
                    packed_fock, packed_beta = packed_fock  # OMol_CSH-style [2, P]
                fock = self._unpack(packed_fock, f"{where}/fock", nao)
            if sparse_beta:
                fock_beta = self._csr(raw, "fock_beta", where, fock.shape[0])
            else:
                fock_beta = (self._unpack(packed_beta, f"{where}/fock_beta", fock.shape[0])
                             if packed_beta is not None else None)
            overlap = (self._unpack(raw["overlap"], f"{where}/overlap", fock.shape[0])
                       if "overlap" in raw else None)
            energy = (float(self._shaped(raw["energy"], (), f"{where}/energy"))
                      if "energy" in raw else None)
            forces = (self._shaped(raw["forces"], (len(elements), 3), f"{where}/forces")
                      if "forces" in raw else None)
            extras = {name: self._extra(value, f"{where}/{name}", name, fock.shape[0])
                      for name, value in raw.items()
                      if name not in CORE_DATASETS and name.split("/")[0] not in SPARSE_GROUPS}
            attrs = g.attrs
            return H5Record(elements=elements, coords=coords, fock=fock, fock_beta=fock_beta,
                            overlap=overlap, energy=energy, forces=forces,
                            charge=int(attrs.get("charge", 0)), spin=int(attrs.get("spin", 0)),
                            converged=bool(attrs.get("converged", True)), key=key,
                            extras=extras)
        except DataError:
            raise
        except OSError as err:
            raise DataError(f"{where}: " + _corrupt_message(self.path, err)) from err
        except LIBRARY_ERRORS + (ValueError,) as err:
            raise DataError(f"{where}: cannot be read ({type(err).__name__}: {err}); the group "
                            "is malformed or damaged: relabel it, or check the file with python "
                            "data_prep/verify.py --data=FILE") from err

    def _periodic_record(self, g: h5py.Group, raw: dict, where: str, key: str) -> H5Record:
        """A periodic group as a `Record` with `cell`, `pbc` and `periodic` labels."""
        for name, value in raw.items():
            want = PERIODIC_DATASETS.get(name)
            if want is None:
                raise DataError(f"{where}/{name}: unexpected dataset in a periodic structure "
                                f"group (known: {sorted(PERIODIC_DATASETS)})")
            if value.dtype != want:
                raise DataError(f"{where}/{name}: dtype {value.dtype}, expected "
                                f"{np.dtype(want)}: the group was rewritten by another tool "
                                "or damaged; relabel it")
        required = ("elements", "coords", "cell", "pbc", "n_ao_per_atom", "pair_atoms",
                    "pair_translations", "block_offsets", "fock_blocks", "pair_weights",
                    "alias_distance", "energy")
        missing = [name for name in required if name not in raw]
        if missing:
            raise DataError(f"{where}: periodic structure without dataset(s) {missing}; the "
                            "group is damaged: relabel it")
        elements = raw["elements"]
        n = elements.shape[0] if elements.ndim == 1 else -1
        if n < 1:
            raise DataError(f"{where}/elements: expected [n] atomic numbers, got shape "
                            f"{list(elements.shape)}")
        coords = self._shaped(raw["coords"], (n, 3), f"{where}/coords")
        cell = self._shaped(raw["cell"], (3, 3), f"{where}/cell")
        pbc = raw["pbc"].astype(bool)
        if pbc.shape != (3,):
            raise DataError(f"{where}/pbc: expected [3], got {list(pbc.shape)}")
        n_ao = raw["n_ao_per_atom"]
        if n_ao.shape != (n,) or np.any(n_ao < 1):
            raise DataError(f"{where}/n_ao_per_atom: expected [{n}] positive counts, got "
                            f"{n_ao.tolist()}")
        nao = self._expected_nao(elements)
        if nao is not None and int(n_ao.sum()) != nao:
            raise DataError(f"{where}: n_ao_per_atom sums to {int(n_ao.sum())} AOs but the "
                            f"basis of these elements has {nao}; wrong basis")
        pairs, trans = raw["pair_atoms"], raw["pair_translations"]
        n_pairs = pairs.shape[0] if pairs.ndim == 2 and pairs.shape[1] == 2 else -1
        if n_pairs < 0 or trans.shape != (n_pairs, 3) or np.any(pairs < 0) or np.any(pairs >= n):
            raise DataError(f"{where}: pair_atoms {list(pairs.shape)} / pair_translations "
                            f"{list(trans.shape)} are not [P, 2] atoms in 0..{n - 1} / [P, 3]")
        off = raw["block_offsets"]
        sizes = n_ao[pairs[:, 0]].astype(np.int64) * n_ao[pairs[:, 1]]
        if off.shape != (n_pairs + 1,) or off[0] != 0 or np.any(np.diff(off) != sizes):
            raise DataError(f"{where}/block_offsets: do not match the [n_i, n_j] block sizes "
                            "of the pairs; the group is damaged: relabel it")
        for name in ("fock_blocks", "overlap_blocks"):
            if name in raw and raw[name].shape != (int(off[-1]),):
                raise DataError(f"{where}/{name}: {list(raw[name].shape)} entries, the pairs "
                                f"need [{int(off[-1])}]")
        for name in ("pair_weights", "alias_distance"):
            if raw[name].shape != (n_pairs,):
                raise DataError(f"{where}/{name}: expected [{n_pairs}], got "
                                f"{list(raw[name].shape)}")
        scalars = {name: float(self._shaped(raw[name], (), f"{where}/{name}"))
                   for name in ("energy", "fermi", "homo", "lumo", "gap") if name in raw}
        kmesh = raw.get("kmesh")
        if kmesh is not None and kmesh.shape != (3,):
            raise DataError(f"{where}/kmesh: expected [3], got {list(kmesh.shape)}")
        path_kpts, path_bands = raw.get("path_kpts"), raw.get("path_bands")
        if (path_kpts is None) != (path_bands is None):
            raise DataError(f"{where}: path_kpts and path_bands go together, the group has "
                            "only one of them; the group is damaged: relabel it")
        if path_kpts is not None:
            n_path = path_kpts.shape[0] if path_kpts.ndim == 2 else -1
            if path_kpts.shape != (n_path, 3) or path_bands.shape != (n_path, int(n_ao.sum())):
                raise DataError(f"{where}: path_kpts {list(path_kpts.shape)} / path_bands "
                                f"{list(path_bands.shape)} are not [K, 3] / [K, "
                                f"{int(n_ao.sum())}] (k-points, AOs)")
        from helm_jax.data.records import PeriodicLabels  # pylint: disable=import-outside-toplevel
        labels = PeriodicLabels(
            pairs=pairs.astype(np.int32), translations=trans.astype(np.int32),
            fock_blocks=raw["fock_blocks"], overlap_blocks=raw.get("overlap_blocks"),
            block_offsets=off.astype(np.int64), n_ao_per_atom=n_ao.astype(np.int32),
            weight=raw["pair_weights"], alias_distance=raw["alias_distance"],
            kmesh=None if kmesh is None else kmesh.astype(np.int32),
            fermi=scalars.get("fermi"), homo=scalars.get("homo"), lumo=scalars.get("lumo"),
            gap=scalars.get("gap"),
            n_electrons=int(g.attrs["n_electrons"]) if "n_electrons" in g.attrs else None,
            path_kpts=path_kpts, path_bands=path_bands)
        attrs = g.attrs
        return H5Record(elements=elements.astype(np.int32), coords=coords,
                        energy=scalars["energy"], charge=int(attrs.get("charge", 0)),
                        spin=int(attrs.get("spin", 0)),
                        converged=bool(attrs.get("converged", True)), key=key, cell=cell,
                        pbc=pbc, periodic=labels)

    def _raw(self, g: h5py.Group, where: str) -> dict[str, np.ndarray]:
        """Every dataset of a structure group; those of a sparse Fock group (`fock_csr`) as
        ``"fock_csr/data"`` etc. (the names their checksums have)."""
        raw = {}
        for name in g:
            if name in SPARSE_GROUPS and isinstance(g[name], h5py.Group):
                for sub in g[name]:
                    if sub not in CSR_DATASETS:
                        raise DataError(f"{where}/{name}/{sub}: unexpected member of a CSR "
                                        f"matrix group (expected {list(CSR_DATASETS)}); the "
                                        "group was written by another tool or damaged")
                    raw[f"{name}/{sub}"] = self._dataset(g, f"{name}/{sub}", where)
            else:
                raw[name] = self._dataset(g, name, where)
        return raw

    @staticmethod
    def _csr(raw: dict[str, np.ndarray], name: str, where: str,
             nao: int | None) -> sp.csr_matrix:
        """The CSR matrix of the group `{name}_csr` (checked: dtypes, shape, AO count,
        index ranges)."""
        group = name + SPARSE_SUFFIX
        where = f"{where}/{group}"
        missing = [d for d in CSR_DATASETS if f"{group}/{d}" not in raw]
        if missing:
            raise DataError(f"{where}: CSR matrix without dataset(s) {missing}; the group is "
                            "damaged: rewrite it")
        data, indices, indptr, shape = (raw[f"{group}/{d}"] for d in CSR_DATASETS)
        if data.dtype.kind != "f" or indices.dtype.kind not in "iu" \
                or indptr.dtype.kind not in "iu" or shape.dtype.kind not in "iu":
            raise DataError(f"{where}: dtypes data {data.dtype}, indices {indices.dtype}, "
                            f"indptr {indptr.dtype}, shape {shape.dtype}; expected float data "
                            "and integer indices, indptr and shape")
        if shape.shape != (2,) or shape[0] != shape[1]:
            raise DataError(f"{where}/shape: expected a square (N, N), got {shape.tolist()}")
        n = int(shape[0])
        if nao is not None and n != nao:
            raise DataError(f"{where}: a {n}x{n} matrix but the basis of these elements has "
                            f"{nao} AOs; wrong basis, or the matrix belongs to another "
                            "structure")
        try:
            m = sp.csr_matrix((data.astype(np.float64), indices, indptr), shape=(n, n))
            m.check_format(full_check=True)
        except ValueError as err:
            raise DataError(f"{where}: not a valid CSR matrix ({err}); the group is damaged: "
                            "rewrite it") from err
        return m

    @staticmethod
    def _dataset(g: h5py.Group, name: str, where: str) -> np.ndarray:
        """The numeric array of dataset `name`; DataError for a group or a non-number dtype."""
        obj = g[name]
        if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "biuf":
            kind = f"dtype {obj.dtype}" if isinstance(obj, h5py.Dataset) else "a group"
            raise DataError(f"{where}/{name}: expected a numeric dataset, found {kind}; the "
                            "file was written by another tool or damaged: relabel it")
        return np.asarray(obj[()])

    def _verify(self, g: h5py.Group, raw: dict[str, np.ndarray], where: str) -> None:
        """Compares the stored checksums (if any) with the data just read."""
        stored = g.attrs.get(CHECKSUM_ATTR)
        if stored is None:
            return  # written before checksums existed
        try:
            stored = json.loads(stored)
            if not isinstance(stored, dict):
                raise ValueError(f"not a JSON object: {stored!r}")
        except (TypeError, ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{where}: the {CHECKSUM_ATTR!r} attr is unreadable ({err}): the "
                            "group was corrupted after it was written; relabel it") from err
        for name, want in stored.items():
            if name == ATTRS_CHECKSUM_KEY:
                got = attrs_checksum(g.attrs)
            elif name not in raw:
                raise DataError(f"{where}/{name}: dataset listed in the stored checksums is "
                                "missing: the group was damaged after it was written; relabel it")
            else:
                got = checksum(raw[name])
            if got != want:
                raise DataError(f"{self.path}: group {g.name.lstrip('/')!r}, dataset {name!r}: "
                                f"stored checksum {want} differs from the data's {got}: the "
                                "label was corrupted after it was written; relabel it")

    @staticmethod
    def _shaped(value: np.ndarray, shape: tuple, where: str) -> np.ndarray:
        """`value` as float64 of `shape` (same-size arrays are reshaped, e.g. flat coords)."""
        if value.size != math.prod(shape):
            raise DataError(f"{where}: expected shape {list(shape)}, got {list(value.shape)}")
        return value.astype(np.float64).reshape(shape)

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

    def _unpack(self, value: np.ndarray, where: str, nao: int | None) -> np.ndarray:
        packed = value.astype(np.float64)  # [N (N + 1) / 2]
        if packed.ndim != 1:
            raise DataError(f"{where}: expected a packed 1-D upper triangle, "
                            f"got shape {list(packed.shape)}")
        try:
            n = n_from_packed_len(packed.shape[0])
        except ValueError as err:
            raise DataError(f"{where}: {err}") from err
        if nao is not None and n != nao:
            raise DataError(f"{where}: packed size is a {n}x{n} matrix but the "
                            f"basis of these elements has {nao} AOs; wrong basis or the file "
                            "is from another code's basis (convert it first)")
        return unpack_upper(packed, n)

    @staticmethod
    def _extra(value: np.ndarray, where: str, name: str, nao: int) -> np.ndarray:
        """An optional dataset; `ao_*` ones unpacked to [..., N, N]."""
        value = value.astype(np.float64)
        if not name.startswith(AO_PREFIX):
            return value
        try:
            if value.ndim < 1:
                raise ValueError("expected [..., N(N+1)/2], got a scalar")
            mats = [unpack_upper(v, nao) for v in value.reshape(-1, value.shape[-1])]
        except ValueError as err:
            raise DataError(f"{where}: {err}") from err
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
        except LIBRARY_ERRORS as err:
            raise DataError(_corrupt_message(self.path, err)) from err
        if cached is None or isinstance(cached, dict):  # never overwrite a foreign list cache
            write_json_cache(sidecar, {"stamp": stamp, "keys": keys, "converged": converged})
        return keys, np.asarray(converged, dtype=bool)


def write_json_cache(path: str, obj) -> None:
    """Writes a JSON cache file atomically (a temporary file, then a rename); in a read-only
    directory the caller keeps what it computed in memory only."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh)
        os.replace(tmp, path)
    except OSError:
        pass
