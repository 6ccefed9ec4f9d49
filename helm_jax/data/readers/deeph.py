"""DeepH-pack's processed layout: one folder per structure with real-space H(R) and S(R).

Layout and conventions, as DeepH-pack writes and reads them (``deeph/preprocess/
openmx_parse.py``, ``abacus_get_data.py``, ``deeph/inference/dense_calc.py``,
``deeph/rotate.py``; docs/periodic.md):

    <structure>/
        element.dat          atomic numbers, one per line
        site_positions.dat   [3, n] Cartesian positions, Angstrom (one column per atom)
        lat.dat              [3, 3] lattice vectors as COLUMNS, Angstrom
        rlat.dat             2 pi inv(lattice) (not needed to read)
        orbital_types.dat    per atom one line: the l of each shell in the file's order
        info.json            optional: {"fermi_level": eV, "isspinful": bool, ...}
        hamiltonians.h5      datasets keyed "[Rx, Ry, Rz, i, j]" (json list, atoms 1-based):
                             the [n_i, n_j] block <i, 0 | H | j, R> in eV
        overlaps.h5          the same keys for S (dimensionless)

``H(k) = sum_R H(R) exp(+2 pi i k . R)`` (dense_calc.py), the sign used throughout this
project, so a key's R is the pair's T. Within a shell DeepH uses the OpenMX order (p: x, y,
z; d: z^2, x^2-y^2, xy, xz, yz; f: m = 0, +1, -1, +2, -2, +3, -3; no sign flips relative to
PySCF's real harmonics, see :mod:`helm_jax.conventions`); the reader converts every block to
PySCF's AO order of the named basis (shells matched by l, in order) and eV to Eh
(``helm_jax.units.HARTREE_EV``). A key present in only one of the two files gets a zero block
in the other (DeepH-pack drops blocks below 1e-8 per file, as its ``dense_calc.py`` assumes).
Spinful (SOC) data are refused. DeepH cells are periodic along all three axes (``pbc`` all
true; a 2-D layer has a vacuum lattice vector and R_z = 0).

A dataset is a folder holding those files (one structure, key ".") or a folder of such
folders (keys = folder names, sorted).
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import conventions
from helm_jax.data import geometry
from helm_jax.data import periodic as periodic_lib
from helm_jax.data.readers.base import FolderReader
from helm_jax.data.records import DataError, PeriodicLabels, Record
from helm_jax.units import HARTREE_EV

MARKER = "hamiltonians.h5"
FILES = ("element.dat", "site_positions.dat", "lat.dat", "orbital_types.dat", MARKER)


def is_structure_dir(path: str) -> bool:
    """Whether `path` holds one DeepH structure (its hamiltonians.h5 and lat.dat)."""
    return os.path.isfile(os.path.join(path, MARKER)) and os.path.isfile(
        os.path.join(path, "lat.dat"))


def _key(r, i: int, j: int) -> str:
    """DeepH's dataset name of a block: json of [Rx, Ry, Rz, i, j] (atoms 1-based)."""
    return json.dumps([int(r[0]), int(r[1]), int(r[2]), int(i) + 1, int(j) + 1])


def _transforms(elements, orbital_types, basis: str, ecp: str | None, where: str):
    out = []
    for a, (z, ls) in enumerate(zip(elements, orbital_types)):
        pyscf_ls = basis_lib.element_basis(int(z), basis, ecp).shell_l
        try:
            out.append(conventions.atom_to_pyscf_transform(ls, pyscf_ls, "deeph"))
        except ValueError as err:
            raise DataError(f"{where}: atom {a} ({basis_lib.symbol(int(z))}) in "
                            f"orbital_types.dat: {err} ({basis})") from err
    return out


class DeepHReader(FolderReader):
    """DeepH-pack processed folders (module docstring) as periodic Records.

    Args:
      path: the dataset folder (one structure, or a folder of structure folders).
      basis: PySCF basis whose shells per element match orbital_types.dat.
      ecp: PySCF ECP name, or None (only used to count AOs).
      cutoff: keep only pairs closer than this (Angstrom); None keeps every block in the
        files.
    """

    kind = "deeph"
    convention = "deeph"
    layout = "DeepH"
    basis_hint = "orbital_types.dat"
    folder_hint = f"{', '.join(FILES)}"
    is_structure_dir = staticmethod(is_structure_dir)

    def _read(self, i: int) -> Record:
        key, folder, where = self._folder(i)
        missing = [f for f in FILES if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise DataError(f"{where}: missing {missing}")
        info = {}
        if os.path.isfile(os.path.join(folder, "info.json")):
            with open(os.path.join(folder, "info.json")) as fh:
                info = json.load(fh)
        if info.get("isspinful"):
            raise DataError(f"{where}: spinful (spin-orbit) DeepH data cannot be represented "
                            "by a restricted Record")
        elements = np.loadtxt(os.path.join(folder, "element.dat"), ndmin=1).astype(np.int64)
        n = len(elements)
        pos = np.loadtxt(os.path.join(folder, "site_positions.dat"), ndmin=2)
        coords = (pos.reshape(3, n) if pos.size == 3 * n else pos).T  # columns are atoms
        lat = np.loadtxt(os.path.join(folder, "lat.dat"), ndmin=2)
        if lat.shape != (3, 3) or coords.shape != (n, 3):
            raise DataError(f"{where}: lat.dat {list(lat.shape)} / site_positions.dat "
                            f"{list(pos.shape)} are not [3, 3] / [3, {n}]")
        cell = lat.T  # lat.dat holds the lattice vectors as columns
        with open(os.path.join(folder, "orbital_types.dat")) as fh:
            orbital_types = [[int(x) for x in line.split()] for line in fh if line.strip()]
        if len(orbital_types) != n:
            raise DataError(f"{where}: orbital_types.dat has {len(orbital_types)} lines for "
                            f"{n} atoms")
        pbc = np.ones(3, bool)
        try:
            z, xyz, cell, pbc = geometry.check_periodic(elements, coords, cell, pbc, where)
        except ValueError as err:
            raise DataError(str(err)) from err
        ts = _transforms(z, orbital_types, self.basis, self.ecp, where)
        n_ao = np.array([len(t.perm) for t in ts], np.int64)
        file_n_ao = np.array([sum(2 * l + 1 for l in ls) for ls in orbital_types])
        blocks = {}
        for name in ("hamiltonians.h5", "overlaps.h5"):
            fpath = os.path.join(folder, name)
            if not os.path.isfile(fpath):
                continue
            with h5py.File(fpath, "r") as f:
                for k, ds in f.items():
                    blocks.setdefault(k, {})[name] = np.asarray(ds[()])
        has_s = os.path.isfile(os.path.join(folder, "overlaps.h5"))
        ii, jj, tt, hb, sb = [], [], [], [], []
        for k, v in blocks.items():
            try:
                r0, r1, r2, a, b = (int(x) for x in json.loads(k))
            except (ValueError, TypeError) as err:
                raise DataError(f"{where}: dataset {k!r} is not a DeepH key "
                                "\"[Rx, Ry, Rz, i, j]\"") from err
            a, b = a - 1, b - 1
            if not (0 <= a < n and 0 <= b < n):
                raise DataError(f"{where}: key {k} names an atom outside 1..{n}")
            shape = (file_n_ao[a], file_n_ao[b])
            h = v.get("hamiltonians.h5", np.zeros(shape))
            s = v.get("overlaps.h5", np.zeros(shape))
            if h.shape != shape or s.shape != shape:
                raise DataError(f"{where}: block {k} has shape {list(h.shape)}, "
                                f"orbital_types.dat gives {list(shape)}")
            if np.iscomplexobj(h) or np.iscomplexobj(s):
                raise DataError(f"{where}: block {k} is complex (spinful data?)")
            ii.append(a)
            jj.append(b)
            tt.append((r0, r1, r2))
            hb.append(conventions.apply_to_block(h, ts[a], ts[b]) / HARTREE_EV)
            sb.append(conventions.apply_to_block(s, ts[a], ts[b]))
        tt = np.asarray(tt, np.int64).reshape(-1, 3)
        if self.cutoff is not None and len(ii):
            d = np.linalg.norm(xyz[jj] + tt @ cell - xyz[ii], axis=1)
            keep = np.flatnonzero(d < self.cutoff)
            ii, jj, tt = np.asarray(ii)[keep], np.asarray(jj)[keep], tt[keep]
            hb, sb = [hb[k] for k in keep], [sb[k] for k in keep]
        try:
            _, pairs, trans, (fock, ovlp), off = periodic_lib.pack_pairs(
                ii, jj, tt, hb, sb, n_ao_per_atom=n_ao)
        except ValueError as err:
            raise DataError(f"{where}: {err}") from err
        fermi = info.get("fermi_level")
        labels = PeriodicLabels(
            pairs=pairs, translations=trans, fock_blocks=fock,
            overlap_blocks=ovlp if has_s else None, block_offsets=off,
            n_ao_per_atom=n_ao.astype(np.int32), weight=np.ones(len(pairs)),
            alias_distance=np.full(len(pairs), np.inf), kmesh=None,
            fermi=None if fermi is None else float(fermi) / HARTREE_EV)
        try:
            geometry.check_periodic_labels(z, labels, self.basis, self.ecp or "", where)
        except ValueError as err:
            raise DataError(str(err)) from err
        return Record(elements=z, coords=xyz, key=key, cell=cell, pbc=pbc, periodic=labels)


def write_deeph(folder: str, record: Record, basis: str, ecp: str | None = None,
                fermi: float | None = None) -> None:
    """Writes a periodic Record in DeepH's layout (the inverse of :class:`DeepHReader`):
    blocks in OpenMX order and eV, overlaps, lat.dat, site_positions.dat, element.dat,
    orbital_types.dat (shells in l order) and info.json. For tests and export.

    Args:
      folder: created if missing.
      record: with ``periodic`` labels in PySCF order (Eh) for ``basis``.
      basis, ecp: the labels' PySCF basis.
      fermi: Fermi level in Eh for info.json (default: the labels' own).
    """
    labels = record.periodic
    os.makedirs(folder, exist_ok=True)
    z = np.asarray(record.elements)
    ls = [sorted(basis_lib.element_basis(int(e), basis, ecp).shell_l) for e in z]
    inv = [conventions.atom_to_pyscf_transform(l, basis_lib.element_basis(
        int(e), basis, ecp).shell_l, "deeph").inverse() for l, e in zip(ls, z)]
    np.savetxt(os.path.join(folder, "element.dat"), z, fmt="%d")
    np.savetxt(os.path.join(folder, "site_positions.dat"), np.asarray(record.coords).T,
               fmt="%.17g")
    np.savetxt(os.path.join(folder, "lat.dat"), np.asarray(record.cell).T, fmt="%.17g")
    np.savetxt(os.path.join(folder, "rlat.dat"), np.linalg.inv(record.cell) * 2 * np.pi,
               fmt="%.17g")
    with open(os.path.join(folder, "orbital_types.dat"), "w") as fh:
        fh.write("".join("  ".join(str(l) for l in row) + "\n" for row in ls))
    mu = labels.fermi if fermi is None else fermi
    with open(os.path.join(folder, "info.json"), "w") as fh:
        json.dump({"nsites": len(z), "isorthogonal": False, "isspinful": False,
                   "norbits": int(np.sum(labels.n_ao_per_atom)),
                   **({} if mu is None else {"fermi_level": float(mu) * HARTREE_EV})}, fh)
    for name, flat, scale in (("hamiltonians.h5", labels.fock_blocks, HARTREE_EV),
                              ("overlaps.h5", labels.overlap_blocks, 1.0)):
        if flat is None:
            continue
        with h5py.File(os.path.join(folder, name), "w") as f:
            for p in range(labels.n_pairs):
                a, b = (int(x) for x in labels.pairs[p])
                blk = flat[labels.block_offsets[p]:labels.block_offsets[p + 1]].reshape(
                    labels.block_shape(p))
                f[_key(labels.translations[p], a, b)] = conventions.apply_to_block(
                    blk, inv[a], inv[b]) * scale
