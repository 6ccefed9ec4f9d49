"""CP2K Gamma-point supercells as the HELM reference reads them (its ``cp2k_material`` data).

Layout (one folder per structure; a dataset is a folder of such folders, keys = sorted folder
names, or one such folder, key "."), following the HELM/MALOQ reference loader
(``maloq/dataset_utils/get_loader.py``: ``load_periodic_cp2k_structure``,
``read_cp2k_matrix``, ``get_fermi_energy``):

    <structure>/
        *.xyz                   the first xyz file (sorted): atoms in Angstrom; the cell from
                                an extended-xyz ``Lattice="ax ay az bx by bz cx cy cz"`` header
                                (rows = lattice vectors; 3 numbers = an orthorhombic box) or
                                a CP2K ``Cell: A B C`` header; periodic along all three axes
        *-KS_SPIN_1-1_0*.csr    Kohn-Sham matrix (or a file named ``*H.csr``), Hartree
        *-S_SPIN_1-1_0*.csr     overlap matrix
        *.out                   CP2K output (not a ``slurm*`` log): the Fermi level

Matrix files are CP2K's ``KS_CSR_WRITE`` / ``S_CSR_WRITE`` output: text lines ``row col
value`` or (``BINARY``) Fortran unformatted sequential records of ``int32 row, int32 col,
float64 value`` framed by 4-byte record markers (16); indices are 1-based. Files written
with ``UPPER_TRIANGULAR`` hold one triangle and are symmetrised ``M + M^T - diag(M)`` (as the
reference does); files that hold both triangles are read as they are. Entries CP2K left out
(below its ``THRESHOLD``) are zero.

The Fermi level is the last line of the ``.out`` matching ``Fermi Energy [eV] :`` (converted
from eV), ``Fermi energy:`` or ``Fermi level:`` (Hartree), the reference's three patterns (the
reference takes the first match; a single-point output prints one). The total energy is the
last ``ENERGY| Total FORCE_EVAL ( QS ) energy`` line (Hartree), when present.

A Gamma-point matrix of a supercell is the 1x1x1 Born-von Karman transform of H(T):
``H_Gamma[i, j] = sum_T H_ij(T)``. The reader stores it exactly as the periodic labeller
stores a k-mesh (:func:`helm_jax.data.periodic.bvk_pairs` with ``kmesh = (1, 1, 1)``): each
atom pair's block at its minimum-image T (ties split by weight), ``alias_distance`` the
distance of the next image folded into it; atom pairs whose H and S blocks are both zero in
the file are not stored. AOs are converted from CP2K's order (``m = -l..l``, p as y, z, x;
shells in the basis file's order, grouped by l for the MOLOPT/def2-type sets used) to PySCF's
(:mod:`helm_jax.conventions`, convention "cp2k").
"""

from __future__ import annotations

import os
import re

import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import conventions
from helm_jax.data import geometry
from helm_jax.data import periodic as periodic_lib
from helm_jax.data.readers.base import FolderReader
from helm_jax.data.records import DataError, PeriodicLabels, Record
from helm_jax.units import HARTREE_EV

KS_TAGS = ("-KS_SPIN_1-1_0", "H.csr")
S_TAG = "-S_SPIN_1-1_0"
_RECORD = np.dtype([("m1", "<i4"), ("row", "<u4"), ("col", "<u4"), ("value", "<f8"),
                    ("m2", "<i4")])
_NUMBER = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"
_FERMI = ((re.compile(r"Fermi Energy \[eV\] :\s*" + _NUMBER), 1 / HARTREE_EV),
          (re.compile(r"Fermi energy:\s*" + _NUMBER), 1.0),
          (re.compile(r"Fermi level:\s*" + _NUMBER), 1.0))
_ENERGY = re.compile(r"ENERGY\| Total FORCE_EVAL \( QS \) energy[^:]*:\s*" + _NUMBER)


def _files(folder: str) -> dict[str, str | None]:
    names = sorted(os.listdir(folder))

    def pick(cond):
        return next((os.path.join(folder, n) for n in names if cond(n)), None)

    return {"xyz": pick(lambda n: n.endswith(".xyz")),
            "ks": pick(lambda n: any(t in n for t in KS_TAGS)),
            "s": pick(lambda n: S_TAG in n),
            "out": pick(lambda n: n.endswith(".out") and "slurm" not in n)}


def is_structure_dir(path: str) -> bool:
    """Whether `path` holds a CP2K structure (an xyz and a KS matrix file)."""
    if not os.path.isdir(path):
        return False
    f = _files(path)
    return f["xyz"] is not None and f["ks"] is not None


def read_csr(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, col, value)`` of a CP2K CSR file (binary records or text), 0-based indices."""
    size = os.path.getsize(path)
    raw = None
    if size and size % _RECORD.itemsize == 0:
        rec = np.fromfile(path, dtype=_RECORD)
        if np.all(rec["m1"] == 16) and np.all(rec["m2"] == 16):
            raw = (rec["row"].astype(np.int64), rec["col"].astype(np.int64),
                   rec["value"].astype(np.float64))
    if raw is None:
        try:
            txt = np.loadtxt(path, ndmin=2)
        except ValueError as err:
            raise DataError(f"{path}: neither CP2K binary CSR records nor text lines "
                            f"'row col value' ({err})") from err
        if txt.shape[1] < 3 or np.any(txt[:, :2] != np.round(txt[:, :2])):
            raise DataError(f"{path}: expected text lines 'row col value', got "
                            f"{txt.shape[1]} columns")
        raw = (txt[:, 0].astype(np.int64), txt[:, 1].astype(np.int64), txt[:, 2])
    row, col, val = raw
    if row.size and (row.min() < 1 or col.min() < 1):
        raise DataError(f"{path}: CP2K CSR indices are 1-based; found index 0")
    return row - 1, col - 1, val


def dense_from_csr(path: str, nao: int) -> np.ndarray:
    """The symmetric ``[nao, nao]`` matrix of a CP2K CSR file (see the module docstring)."""
    row, col, val = read_csr(path)
    if row.size and max(row.max(), col.max()) >= nao:
        raise DataError(f"{path}: index {max(row.max(), col.max()) + 1} beyond the {nao} AOs "
                        "of this structure in the reader's basis")
    m = np.zeros((nao, nao))
    np.add.at(m, (row, col), val)
    if not np.any(row > col):  # one triangle (UPPER_TRIANGULAR): symmetrise
        m = m + m.T - np.diag(np.diag(m))
    elif np.any(row < col) and not np.allclose(m, m.T, rtol=0, atol=1e-12):
        raise DataError(f"{path}: both triangles are present but the matrix is not symmetric")
    return m


def write_csr(path: str, matrix: np.ndarray, binary: bool = True, upper: bool = True) -> None:
    """Writes a matrix as CP2K's CSR output (1-based; nonzero entries; one triangle when
    ``upper``): binary Fortran records or text. For tests and export."""
    m = np.asarray(matrix, np.float64)
    rows, cols = np.nonzero(np.triu(m) if upper else m)
    if binary:
        rec = np.zeros(len(rows), _RECORD)
        rec["m1"] = rec["m2"] = 16
        rec["row"], rec["col"], rec["value"] = rows + 1, cols + 1, m[rows, cols]
        rec.tofile(path)
    else:
        with open(path, "w") as fh:
            fh.writelines(f"{r + 1:8d}{c + 1:8d} {m[r, c]:.17E}\n" for r, c in zip(rows, cols))


def read_xyz_cell(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(symbols, coords [n, 3], cell [3, 3])`` of a CP2K structure xyz (module docstring)."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    try:
        n = int(lines[0].split()[0])
        header = lines[1]
        rows = [lines[2 + k].split() for k in range(n)]
        symbols = [r[0] for r in rows]
        coords = np.array([[float(x) for x in r[1:4]] for r in rows])
    except (IndexError, ValueError) as err:
        raise DataError(f"{path}: not an xyz file (atom count, comment, 'Symbol x y z' "
                        f"lines): {err}") from err
    m = re.search(r'Lattice="([^"]+)"', header)
    if m:
        vals = [float(x) for x in m.group(1).split()]
    else:
        parts = header.split()
        if not parts or parts[0].lower() not in ("cell", "cell:"):
            raise DataError(f"{path}: no cell in the comment line (expected "
                            "Lattice=\"...\" or 'Cell: A B C')")
        vals = [float(x) for x in parts[1:4]]
    if len(vals) == 9:
        cell = np.array(vals).reshape(3, 3)
    elif len(vals) == 3:
        cell = np.diag(vals)
    else:
        raise DataError(f"{path}: the cell has {len(vals)} numbers; expected 9 (rows = "
                        "lattice vectors) or 3 (an orthorhombic box)")
    return symbols, coords, cell


def read_fermi(path: str) -> float | None:
    """The Fermi level (Eh) of a CP2K output: the last line matching one of the patterns."""
    found = None
    with open(path, errors="replace") as fh:
        for line in fh:
            for pattern, scale in _FERMI:
                mm = pattern.search(line)
                if mm:
                    found = float(mm.group(1)) * scale
    return found


def read_energy(path: str) -> float | None:
    """The last total energy (Eh) printed in a CP2K output, or None."""
    found = None
    with open(path, errors="replace") as fh:
        for line in fh:
            mm = _ENERGY.search(line)
            if mm:
                found = float(mm.group(1))
    return found


class CP2KReader(FolderReader):
    """CP2K Gamma-point supercell folders (module docstring) as periodic Records.

    Args:
      path: dataset folder (a folder of structure folders, or one structure folder).
      basis: PySCF basis whose shells per element match CP2K's basis (e.g. ``gth-dzvp`` for
        DZVP-MOLOPT-GTH: 2s 2p 1d for C).
      ecp: PySCF ECP name or None (only to count AOs).
      cutoff: keep only pairs closer than this (Angstrom); None keeps every nonzero pair.
    """

    kind = "cp2k"
    convention = "cp2k"
    layout = "CP2K"
    basis_hint = "the CP2K basis set"
    folder_hint = f"an .xyz and a *{KS_TAGS[0]}*.csr file"
    is_structure_dir = staticmethod(is_structure_dir)

    def _read(self, i: int) -> Record:
        key, folder, where = self._folder(i)
        files = _files(folder)
        if files["s"] is None:
            raise DataError(f"{where}: no overlap file (*{S_TAG}*)")
        symbols, coords, cell = read_xyz_cell(files["xyz"])
        pbc = np.ones(3, bool)
        try:
            z, xyz, cell, pbc = geometry.check_periodic(symbols, coords, cell, pbc, where)
        except ValueError as err:
            raise DataError(str(err)) from err
        t = conventions.to_pyscf_transform(tuple(int(e) for e in z), self.basis, self.ecp,
                                           "cp2k")
        nao = len(t.perm)
        fock = t.apply(dense_from_csr(files["ks"], nao))
        ovlp = t.apply(dense_from_csr(files["s"], nao))
        n_ao = np.array([basis_lib.element_basis(int(e), self.basis, self.ecp).n_ao
                         for e in z], np.int64)
        bvk = periodic_lib.bvk_pairs(xyz, cell, pbc, (1, 1, 1), self.cutoff)
        pl = bvk.pairs
        off = periodic_lib.ao_offsets(n_ao)
        nonzero = np.array([np.any(fock[off[a]:off[a + 1], off[b]:off[b + 1]])
                            or np.any(ovlp[off[a]:off[a + 1], off[b]:off[b + 1]])
                            or a == b for a, b in zip(pl.i, pl.j)], bool)
        sel = np.flatnonzero(nonzero)
        trans = np.zeros((1, 3), np.int64)
        labels = PeriodicLabels(
            pairs=np.stack([pl.i[sel], pl.j[sel]], 1).astype(np.int32),
            translations=pl.translation[sel].astype(np.int32),
            fock_blocks=periodic_lib.gather_blocks(fock[None], trans, pl.i[sel], pl.j[sel],
                                                   bvk.bvk_index[sel], n_ao),
            overlap_blocks=periodic_lib.gather_blocks(ovlp[None], trans, pl.i[sel],
                                                      pl.j[sel], bvk.bvk_index[sel], n_ao),
            block_offsets=periodic_lib.block_offsets(pl.i[sel], pl.j[sel], n_ao),
            n_ao_per_atom=n_ao.astype(np.int32), weight=bvk.weight[sel],
            alias_distance=bvk.alias_distance[sel], kmesh=np.ones(3, np.int32),
            fermi=read_fermi(files["out"]) if files["out"] else None)
        try:
            geometry.check_periodic_labels(z, labels, self.basis, self.ecp or "", where)
        except ValueError as err:
            raise DataError(str(err)) from err
        energy = read_energy(files["out"]) if files["out"] else None
        return Record(elements=z, coords=xyz, energy=energy, key=key, cell=cell, pbc=pbc,
                      periodic=labels)


def gamma_matrices(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """The Gamma-point ``(H, S)`` ``[nao, nao]`` of a periodic Record (PySCF order): the
    weighted sum of its blocks over T, i.e. ``H(k = 0)``."""
    labels = record.periodic
    t, h = periodic_lib.assemble_translations(labels.pairs[:, 0], labels.pairs[:, 1],
                                              labels.translations, labels.fock_blocks,
                                              labels.block_offsets, labels.n_ao_per_atom,
                                              labels.weight)
    _, s = periodic_lib.assemble_translations(labels.pairs[:, 0], labels.pairs[:, 1],
                                              labels.translations, labels.overlap_blocks,
                                              labels.block_offsets, labels.n_ao_per_atom,
                                              labels.weight)
    return h.sum(0), s.sum(0)


def write_cp2k(folder: str, symbols, coords, cell, fock_gamma, overlap_gamma, basis: str,
               ecp: str | None = None, fermi_ev: float | None = None, binary: bool = True,
               project: str = "helm") -> None:
    """Writes one structure folder in the layout :class:`CP2KReader` reads (for tests and
    export): the xyz with ``Lattice=``, KS and S CSR files in CP2K's AO order (converted
    from PySCF order) and a minimal ``.out`` with the Fermi energy in eV."""
    os.makedirs(folder, exist_ok=True)
    z = geometry.to_atomic_numbers(symbols)
    t = conventions.to_pyscf_transform(tuple(int(e) for e in z), basis, ecp, "cp2k").inverse()
    cell = np.asarray(cell, np.float64)
    with open(os.path.join(folder, f"{project}.xyz"), "w") as fh:
        fh.write(f"{len(z)}\nLattice=\"{' '.join(f'{v:.17g}' for v in cell.reshape(-1))}\" "
                 "Properties=species:S:1:pos:R:3\n")
        for e, r in zip(z, np.asarray(coords, np.float64)):
            fh.write(f"{basis_lib.symbol(int(e))} {r[0]:.17g} {r[1]:.17g} {r[2]:.17g}\n")
    ext = "csr" if binary else "txt.csr"
    write_csr(os.path.join(folder, f"{project}-KS_SPIN_1-1_0.{ext}"), t.apply(fock_gamma),
              binary)
    write_csr(os.path.join(folder, f"{project}-S_SPIN_1-1_0.{ext}"), t.apply(overlap_gamma),
              binary)
    if fermi_ev is not None:
        with open(os.path.join(folder, f"{project}.out"), "w") as fh:
            fh.write(f" Fermi Energy [eV] :  {fermi_ev:.17g}\n")
