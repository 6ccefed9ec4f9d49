"""Geometry input: xyz / extended-xyz / ASE databases -> `Structure`, plus validation.

`read_structures` turns every frame of an input file into a `Structure` (atomic numbers,
Angstrom coordinates, charge, spin, a `source` tag such as "ethanol_train_01.xyz:17").
Charge and spin come from the frame's own metadata when present (xyz header keys
`charge`, `spin` = 2S or `multiplicity` = 2S + 1; ASE db key-value pairs of the same
names; a db row's charge may also be the sum of its atoms' initial charges), else from
the caller's defaults.

This module is the one validator of geometries, run once per record: `check_geometry`
(shapes, known elements, finite coordinates, no atoms closer than `MIN_DISTANCE`) for graphs
built from raw records (`helm_jax.data.graphs.build_graph`), and `validate_structure`, the
same checks plus `electron_count` (a basis/ECP that covers every element, charge/spin
consistent with the electron count), for structures to label and for every record a reader
yields. Spin follows PySCF: `spin = 2S = n_alpha - n_beta`.

Periodic structures (docs/periodic.md): a frame is periodic when it has a cell and at least
one periodic axis: an extended-xyz header with `Lattice="..."` **and** an explicit `pbc="T T
F"` (ASE assumes `pbc` true whenever `Lattice` is given, but molecular files such as rMD17
carry a `Lattice` box, so a frame without `pbc=` stays a molecule), an ASE db row with `pbc`
set, or an `ase.Atoms` (`structure_from_atoms`). `Structure.cell` is float64 [3, 3] Angstrom
with rows = lattice vectors and `Structure.pbc` bool [3]; both are None for molecules (no
cell, or `pbc` all false). 2-D systems are `pbc = (T, T, F)` with a vacuum lattice vector
along the third axis; 3-D crystals `(T, T, T)`. `check_periodic` validates them: a singular
cell, a periodic axis with a zero lattice vector, and atoms closer than `MIN_DISTANCE` to
each other or to their own images across the cell are refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import ase.data
import numpy as np

from helm_jax import basis as basis_lib
from helm_jax.data import periodic as periodic_lib
from helm_jax.data.records import DataError

MIN_DISTANCE = 0.1  # Angstrom; closer atoms are treated as a broken geometry.
MAX_Z = 118


@dataclasses.dataclass(frozen=True)
class Structure:
    """One molecular geometry to label.

    Attributes:
        elements: int32 [n] atomic numbers.
        coords: float64 [n, 3] Cartesian coordinates in Angstrom.
        charge: total charge (e).
        spin: 2S = n_alpha - n_beta (PySCF convention).
        source: where it came from, "<file name>:<frame index>" (frame index 0-based).
        cell: float64 [3, 3] Angstrom, rows = lattice vectors, for periodic structures;
            None for molecules.
        pbc: bool [3] periodic axes (None for molecules).
    """

    elements: np.ndarray
    coords: np.ndarray
    charge: int
    spin: int
    source: str
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None

    @property
    def is_periodic(self) -> bool:
        """Whether the structure has a cell with at least one periodic axis."""
        return self.pbc is not None and bool(np.any(self.pbc))


def to_atomic_numbers(elements: Sequence[int | str] | np.ndarray) -> np.ndarray:
    """Converts element symbols or atomic numbers to an int32 array of atomic numbers.

    Args:
        elements: [n] symbols ("C", "Cl") or atomic numbers.

    Returns:
        int32 [n] atomic numbers.

    Raises:
        ValueError: if a symbol is unknown or a number is outside 1..118.
    """
    numbers = []
    for i, e in enumerate(np.asarray(elements).reshape(-1).tolist()):
        if isinstance(e, str):
            z = ase.data.atomic_numbers.get(e.strip().capitalize())
            if z is None or z == 0:
                raise ValueError(f"atom {i}: unknown element symbol {e!r}")
        else:
            z = int(e)
            if float(e) != z or not 1 <= z <= MAX_Z:
                raise ValueError(f"atom {i}: unknown atomic number {e!r} (valid: 1..{MAX_Z})")
        numbers.append(z)
    return np.asarray(numbers, dtype=np.int32)


def ecp_core_electrons(z: int, basis: str, ecp: str = "") -> int:
    """Number of core electrons an ECP removes from element `z` (0 without an ECP).

    Raises:
        ValueError: if PySCF has no `basis` (or `ecp`) data for the element.
    """
    return basis_lib.element_basis(int(z), basis, ecp or None).ecp_electrons


#: Relative margin of the k-d tree search radius, in units of the coordinates' machine
#: epsilon: the tree's float64 squared-distance test may round the other way than
#: ``np.linalg.norm(x_i - x_j) < radius`` in the coordinates' dtype, which decides.
_SEARCH_MARGIN_EPS = 1e4


def close_pairs(coords: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """Unordered atom pairs ``i < j`` with ``np.linalg.norm(coords[i] - coords[j]) < radius``.

    A k-d tree (``scipy.spatial.cKDTree``) finds the candidates, so time and memory grow with
    the number of pairs, not with ``n^2``; each candidate's distance is then computed exactly
    as a dense distance matrix ``np.linalg.norm(coords[:, None] - coords[None], axis=-1)``
    would hold it (in the coordinates' float dtype), and that distance decides; the tree's
    search radius has a small relative margin (:data:`_SEARCH_MARGIN_EPS`).

    Args:
      coords: ``[n, 3]`` Angstrom.
      radius: strict upper bound on the distance (Angstrom).

    Returns:
      ``(i [P], j [P], distance [P])``: int64 atom indices with ``i < j`` in row-major
      order (sorted by ``i``, then ``j``) and the distances.
    """
    from scipy.spatial import cKDTree  # pylint: disable=import-outside-toplevel

    coords = np.asarray(coords)
    if coords.dtype.kind != "f":
        coords = coords.astype(np.float64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, coords.dtype))
    if len(coords) < 2 or not radius > 0:
        return empty
    margin = 1.0 + _SEARCH_MARGIN_EPS * float(np.finfo(coords.dtype).eps)
    pairs = cKDTree(coords).query_pairs(float(radius) * margin,
                                        output_type="ndarray").astype(np.int64)  # [P, 2]
    if not len(pairs):
        return empty
    i, j = pairs.min(axis=1), pairs.max(axis=1)
    dist = np.linalg.norm(coords[i] - coords[j], axis=-1)
    keep = dist < radius
    i, j, dist = i[keep], j[keep], dist[keep]
    order = np.lexsort((j, i))
    return i[order], j[order], dist[order]


def check_geometry(elements, coords, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Checks one geometry: shapes, known elements, finite coordinates, no overlapping atoms.

    Args:
        elements: [n] atomic numbers or element symbols.
        coords: [n, 3] coordinates in Angstrom.
        key: the record's name, prefixed to every message ("" for none).

    Returns:
        (elements int32 [n], coords float64 [n, 3]).

    Raises:
        ValueError: naming the problem (no atoms, shape, unknown element, non-finite
            coordinate, atoms closer than `MIN_DISTANCE`).
    """
    where = f"{key}: " if key else ""
    try:
        z = to_atomic_numbers(elements)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from err
    xyz = np.asarray(coords, dtype=np.float64)
    n = z.shape[0]
    if n == 0:
        raise ValueError(f"{where}structure has no atoms")
    if xyz.shape != (n, 3):
        raise ValueError(f"{where}coords must have shape [n_atoms, 3] = [{n}, 3] to match "
                         f"{n} elements, got {list(xyz.shape)}")
    bad = np.argwhere(~np.isfinite(xyz))
    if bad.size:
        i, k = bad[0]
        raise ValueError(f"{where}non-finite coordinate (NaN or inf) at atom {i}, axis "
                         f"{'xyz'[k]}: {xyz[i, k]}; fix or drop this structure")
    if n > 1:
        # Pairs closer than MIN_DISTANCE from a k-d tree (O(n) memory, not an [n, n] matrix);
        # the closest one, first in row-major order among ties, is reported.
        close_i, close_j, dist = close_pairs(xyz, MIN_DISTANCE)
        if len(dist):
            k = int(np.argmin(dist))  # pairs are in row-major order: the first of ties
            i, j = int(close_i[k]), int(close_j[k])
            raise ValueError(f"{where}atoms {i} and {j} are {dist[k]:.4f} A apart (< "
                             f"{MIN_DISTANCE} A): overlapping atoms, probably a duplicated "
                             "atom or coordinates in the wrong unit")
    return z, xyz


def check_periodic(elements, coords, cell, pbc, key: str = ""
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checks a periodic structure: `check_geometry` plus its cell and periodic images.

    Args:
        elements: [n] atomic numbers or symbols.
        coords: [n, 3] Angstrom (anywhere; atoms need not be wrapped into the cell).
        cell: [3, 3] Angstrom, rows = lattice vectors (a non-periodic row may be zero).
        pbc: [3] periodic axes (at least one true).
        key: the structure's name, prefixed to every message.

    Returns:
        (elements int32 [n], coords float64 [n, 3], cell float64 [3, 3], pbc bool [3]).

    Raises:
        ValueError: naming the structure and the fix: bad shapes or non-finite cell, a
            periodic axis whose lattice vector is zero, a singular cell, or two atoms (or an
            atom and its own image) closer than `MIN_DISTANCE` across the periodic images.
    """
    where = f"{key}: " if key else ""
    z, xyz = check_geometry(elements, coords, key)
    try:
        cell, pbc = periodic_lib.as_cell(cell, pbc)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from err
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"{where}the cell has non-finite entries: {cell.tolist()}")
    if not pbc.any():
        raise ValueError(f"{where}pbc is false along every axis: a molecule, not a periodic "
                         "structure (give it no cell, or set pbc along its periodic axes)")
    lengths = np.linalg.norm(cell, axis=1)
    for a in range(3):
        if pbc[a] and lengths[a] < 1e-8:
            raise ValueError(
                f"{where}pbc is true along axis {a} (pbc={_pbc_str(pbc)}) but lattice vector "
                f"{a} is zero: give that lattice vector (Lattice=\"...\", rows = vectors in "
                "Angstrom) or set pbc false along that axis")
    try:
        periodic_lib.completed_cell(cell, pbc)
    except ValueError as err:
        raise ValueError(
            f"{where}singular cell: {err} (lattice {np.round(cell, 6).tolist()}, pbc="
            f"{_pbc_str(pbc)}); the lattice vectors must span the periodic directions: check "
            "the Lattice= entries (rows are vectors) and their units (Angstrom)") from err
    close = periodic_lib.image_pairs(xyz, cell, pbc, MIN_DISTANCE)
    if len(close):
        p = int(np.argmin(close.distance))
        i, j, t, d = close.i[p], close.j[p], close.translation[p].tolist(), close.distance[p]
        what = (f"atom {i} and its own periodic image in cell T={t}" if i == j else
                f"atoms {i} and {j} (in cell T={t})")
        raise ValueError(
            f"{where}{what} are {d:.4f} A apart (< {MIN_DISTANCE} A): overlapping atoms "
            "across periodic images; probably a duplicated atom at a cell boundary (e.g. both "
            "x=0 and x=a), a lattice too small for its atoms, or coordinates in the wrong "
            "unit: remove the duplicate or fix the lattice")
    return z, xyz, cell, pbc


def check_periodic_labels(elements, labels, basis: str | None = None, ecp: str = "",
                          key: str = "") -> None:
    """Checks `PeriodicLabels` against their structure: pair atoms in range, one on-site
    pair (i, i, 0) per atom, consistent offsets and block sizes, finite values, and (with
    `basis`) each atom's AO count in that basis.

    Raises:
        ValueError: naming the structure, the pair and the problem.
    """
    where = f"{key}: " if key else ""
    z = np.asarray(elements)
    n = len(z)
    pairs = np.asarray(labels.pairs)
    trans = np.asarray(labels.translations)
    n_ao = np.asarray(labels.n_ao_per_atom)
    if n_ao.shape != (n,):
        raise ValueError(f"{where}n_ao_per_atom has {n_ao.shape} entries for {n} atoms")
    if basis:
        want = np.array([basis_lib.element_basis(int(e), basis, ecp or None).n_ao for e in z])
        bad = np.flatnonzero(want != n_ao)
        if bad.size:
            a = int(bad[0])
            raise ValueError(f"{where}atom {a} ({basis_lib.symbol(int(z[a]))}) has {n_ao[a]} "
                             f"AOs in the file but {want[a]} in {basis}: the file is in "
                             "another basis")
    if pairs.ndim != 2 or pairs.shape[1] != 2 or trans.shape != (len(pairs), 3):
        raise ValueError(f"{where}pairs {list(pairs.shape)} / translations "
                         f"{list(trans.shape)} are not [P, 2] / [P, 3]")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"{where}pair atoms outside 0..{n - 1}")
    onsite = (pairs[:, 0] == pairs[:, 1]) & ~trans.any(1)
    if sorted(pairs[onsite, 0].tolist()) != list(range(n)):
        raise ValueError(f"{where}the on-site blocks (i, i, T=0) must be present once per atom")
    off = np.asarray(labels.block_offsets)
    sizes = n_ao[pairs[:, 0]].astype(np.int64) * n_ao[pairs[:, 1]]
    if off.shape != (len(pairs) + 1,) or off[0] != 0 or np.any(np.diff(off) != sizes):
        raise ValueError(f"{where}block offsets do not match the [n_i, n_j] block sizes")
    for name in ("fock_blocks", "overlap_blocks"):
        v = getattr(labels, name)
        if v is None:
            continue
        if np.shape(v) != (int(off[-1]),):
            raise ValueError(f"{where}{name} has {np.shape(v)} entries, the pairs need "
                             f"{int(off[-1])}")
        if not np.all(np.isfinite(v)):
            raise DataError(f"{where}{name} holds non-finite values (NaN or Inf): the label "
                            "is corrupt")


def _pbc_str(pbc) -> str:
    return '"' + " ".join("T" if p else "F" for p in pbc) + '"'


def structure_from_atoms(atoms, charge: int = 0, spin: int | None = None,
                         source: str = "atoms") -> Structure:
    """A `Structure` from an `ase.Atoms`: periodic (with its cell) when `atoms.pbc` has a
    true axis, else a molecule. Charge and spin come from `atoms.info` when present.

    Raises:
        ValueError: an invalid periodic structure (see `check_periodic`).
    """
    q, s = _charge_spin(dict(atoms.info), charge, spin, source)
    z = to_atomic_numbers(atoms.numbers)
    if s is None:
        s = int(z.sum() - q) % 2
    cell, pbc = _frame_cell(np.asarray(atoms.cell[:], np.float64), np.asarray(atoms.pbc, bool))
    xyz = np.asarray(atoms.positions, np.float64)
    if cell is not None:
        z, xyz, cell, pbc = check_periodic(z, xyz, cell, pbc, source)
    return Structure(elements=z, coords=xyz, charge=q, spin=int(s), source=source, cell=cell,
                     pbc=pbc)


def _frame_cell(cell: np.ndarray | None, pbc) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(cell, pbc) of a frame, or (None, None) for a molecule (no periodic axis)."""
    if pbc is None or not np.any(pbc):
        return None, None
    return (np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64).reshape(3, 3),
            np.asarray(pbc, bool).reshape(3))


def electron_count(z: np.ndarray, charge: int = 0, spin: int | None = None,
                   basis: str | None = None, ecp: str = "") -> tuple[int, int]:
    """Electron count and spin of atomic numbers `z` at a charge, checked for consistency.

    Args:
        z: int [n] atomic numbers.
        charge, spin, basis, ecp: as in `validate_structure`.

    Returns:
        (n_electrons, spin).

    Raises:
        ValueError: a non-integer charge, too few electrons, an invalid spin or one the
            electron count cannot have, or a basis/ECP without an element.
    """
    if int(charge) != charge:
        raise ValueError(f"charge must be an integer, got {charge!r}")
    core = sum(ecp_core_electrons(int(e), basis, ecp) for e in z) if basis else 0
    n_electrons = int(np.sum(z)) - core - int(charge)
    if n_electrons < 0:
        raise ValueError(f"charge {charge} leaves {n_electrons} electrons")
    if spin is None:
        spin = n_electrons % 2
    if int(spin) != spin or spin < 0:
        raise ValueError(f"spin (2S = n_alpha - n_beta) must be a non-negative integer, got {spin!r}")
    if (n_electrons - int(spin)) % 2 or spin > n_electrons:
        raise ValueError(
            f"charge={charge} gives {n_electrons} electrons, which cannot have spin 2S={spin} "
            f"(n_electrons - spin must be even and >= 0); fix the charge or spin "
            "(spin is 2S, not the multiplicity).")
    return n_electrons, int(spin)


def validate_structure(elements, coords, charge: int = 0, spin: int | None = None,
                       basis: str | None = None, ecp: str = "") -> tuple[np.ndarray, int, int]:
    """Checks one geometry and returns its atomic numbers, electron count and spin.

    `check_geometry` followed by `electron_count`.

    Args:
        elements: [n] atomic numbers or element symbols.
        coords: [n, 3] coordinates in Angstrom.
        charge: total charge.
        spin: 2S = n_alpha - n_beta; None picks 0 or 1 from the electron count parity.
        basis: if given, electrons are counted as PySCF would (ECP cores removed) and the
            basis/ECP must cover every element.
        ecp: PySCF ECP name ("" for none); only used with `basis`.

    Returns:
        (elements int32 [n], n_electrons, spin).

    Raises:
        ValueError: naming the problem (shape, non-finite coordinate, atoms too close,
            unknown element, charge/spin inconsistent with the electron count).
    """
    z, _ = check_geometry(elements, coords)
    return (z, *electron_count(z, charge, spin, basis, ecp))


def _charge_spin(info: dict, default_charge: int, default_spin: int | None, where: str):
    """Reads charge and spin (2S) from a metadata dict, falling back to defaults."""
    lower = {str(k).lower(): v for k, v in info.items()}
    charge = int(round(float(lower.get("charge", default_charge))))
    if "spin" in lower:
        spin = int(lower["spin"])
    elif "multiplicity" in lower:
        spin = int(lower["multiplicity"]) - 1
        if spin < 0:
            raise ValueError(f"{where}: multiplicity must be >= 1, got {lower['multiplicity']}")
    else:
        spin = default_spin
    return charge, spin


def _row_info(row) -> dict:
    """Metadata of an ASE db row; its charge is the sum of the atoms' initial charges."""
    info = dict(row.key_value_pairs)
    if row.get("initial_charges") is not None:
        info.setdefault("charge", float(np.sum(row.initial_charges)))
    return info


def read_structures(path: str, charge: int = 0, spin: int | None = None) -> list[Structure]:
    """Reads every frame of an xyz / extended-xyz file or an ASE database.

    Files ending in ".db" (or ".json") are read with `ase.db`; anything else with
    `ase.io.read(path, index=':')`. Spin None is resolved to 0/1 by electron parity.

    Args:
        path: input file.
        charge: charge for frames that carry none.
        spin: 2S for frames that carry none.

    Returns:
        One `Structure` per frame, in file order.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if a frame's charge/spin metadata is invalid.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"input geometry file {path!r} does not exist")
    name = os.path.basename(path)
    # frames: (numbers [n], positions [n, 3], metadata dict, cell, pbc) per frame.
    frames = _read_frames(path)
    structures = []
    for i, (numbers, positions, info, cell, pbc) in enumerate(frames):
        where = f"{name}:{i}"
        q, s = _charge_spin(info, charge, spin, where)
        z = to_atomic_numbers(numbers)
        if s is None:
            s = int(z.sum() - q) % 2
        xyz = np.asarray(positions, np.float64)
        cell, pbc = _frame_cell(cell, pbc)
        if cell is not None:
            z, xyz, cell, pbc = check_periodic(z, xyz, cell, pbc, where)
        structures.append(Structure(elements=z, coords=xyz, charge=q, spin=int(s),
                                    source=where, cell=cell, pbc=pbc))
    return structures


def _read_frames(path: str) -> list[tuple]:
    """``(numbers [n], positions [n, 3], metadata dict, cell [3, 3] | None, pbc [3] | None)``
    of every frame (ASE). An xyz frame's pbc counts only when its header names `pbc=`."""
    if path.endswith((".db", ".json")):
        def read():
            import ase.db  # pylint: disable=import-outside-toplevel
            return [(row.numbers, row.positions, _row_info(row),
                     np.asarray(row.cell, np.float64), np.asarray(row.pbc, bool))
                    for row in ase.db.connect(path).select()]
        frames = ase_parse(path, read)
    else:
        atoms = read_atoms(path)
        explicit = _explicit_pbc_frames(path, len(atoms))
        frames = [(a.numbers, a.positions, a.info,
                   np.asarray(a.cell[:], np.float64) if has else None,
                   np.asarray(a.pbc, bool) if has else None)
                  for a, has in zip(atoms, explicit)]
    if not frames:
        raise DataError(f"{path} holds no structures: an empty file or an empty database.")
    return frames


_PBC_KEY = re.compile(r"(?:^|\s)pbc\s*=", re.IGNORECASE)


def _explicit_pbc_frames(path: str, n_frames: int) -> list[bool]:
    """For each xyz frame, whether its comment line names `pbc=` (extended xyz)."""
    found = []
    with open(path, errors="replace") as fh:
        lines = iter(fh)
        for line in lines:
            if not line.strip():
                continue
            try:
                count = int(line.split()[0])
            except ValueError:
                break
            comment = next(lines, "")
            found.append(bool(_PBC_KEY.search(comment)))
            for _ in range(count):
                next(lines, None)
    if len(found) != n_frames:
        raise DataError(f"{path}: {n_frames} frames read by ASE but {len(found)} xyz headers "
                        "found: the file is not plain (extended) xyz")
    return found


def read_atoms(path: str) -> list:
    """Every frame of an xyz / extended-xyz file as ``ase.Atoms``; parse errors become
    :class:`DataError` naming the file and the frame."""
    import ase.io  # pylint: disable=import-outside-toplevel
    frames: list = []

    def read():
        frames.extend(ase.io.iread(path, index=":"))  # frame by frame: a failure has an index
        return frames
    return ase_parse(path, read, frame=lambda: len(frames))


def ase_parse(path: str, read, frame=None):
    """``read()``, with ASE's many error types (UnknownFileTypeError, KeyError for an
    unknown symbol, ...) re-raised as :class:`DataError` naming the file (and the frame,
    0-based, from ``frame()`` when given)."""
    try:
        return read()
    except Exception as err:  # pylint: disable=broad-except
        at = f", frame {frame()}" if frame is not None else ""
        raise DataError(
            f"{path}{at}: ASE cannot parse it ({type(err).__name__}: {err}). An xyz file "
            "needs, per frame, an atom-count line, a comment line and one 'Symbol x y z' line "
            "per atom with a known element symbol.") from err


def build_mole(structure: Structure, basis: str, ecp: str = "", verbose: int = 0):
    """Builds the PySCF Mole of a structure (coordinates in Angstrom, spherical AOs).

    Args:
        structure: the geometry, charge and spin.
        basis: PySCF basis name.
        ecp: PySCF ECP name ("" for none).
        verbose: PySCF verbosity.

    Returns:
        A built `pyscf.gto.Mole`.
    """
    from pyscf import gto  # pylint: disable=import-outside-toplevel

    atoms = [[int(z), tuple(float(c) for c in xyz)]
             for z, xyz in zip(structure.elements, structure.coords)]
    # Name the ECP only for elements that have one (PySCF warns for every other element).
    ecps = {ase.data.chemical_symbols[z]: ecp for z in set(structure.elements.tolist())
            if ecp and ecp_core_electrons(z, basis, ecp) > 0}
    return gto.M(atom=atoms, unit="Angstrom", basis=basis, ecp=ecps or None,
                 charge=structure.charge, spin=structure.spin, cart=False, verbose=verbose)
