"""Lattices, periodic images and Bloch transforms of real-space Hamiltonian blocks (numpy).

Conventions (docs/periodic.md; checked against PySCF by tests/test_periodic_labels.py):

* A cell is float64 ``[3, 3]`` in Angstrom whose **rows are the lattice vectors** a_1, a_2,
  a_3; ``pbc`` is bool ``[3]``. An integer translation ``T = (T_1, T_2, T_3)`` moves by
  ``T @ cell`` (Cartesian). Along a non-periodic axis ``T`` is always 0.
* The real-space block of a pair ``(i, j, T)`` is ``H_ij(T) = <phi_i(r - r_i) | H |
  phi_j(r - r_j - T @ cell)>``: atom i in the home cell, atom j in the cell shifted by T,
  both at their coordinates as given (not wrapped). Its edge vector is
  ``r_j + T @ cell - r_i``.
* Bloch sums use k in fractional reciprocal coordinates (``k_cart = 2 pi k @ inv(cell).T``)
  and the sign of PySCF's Bloch AOs ``phi_k = sum_T exp(+i k_cart . T_cart) phi(r - T)``:

      H(k) = sum_T exp(+2 pi i k . T) H(T).

  This is the sign of ``cell.pbc_intor(..., kpts)`` and ``mf.get_fock()`` of PySCF's k-point
  SCF (and of DeepH-pack's band script); the inverse over a Gamma-centred Monkhorst-Pack mesh
  of ``N = N_1 N_2 N_3`` points is ``H_BvK(T) = (1/N) sum_k exp(-2 pi i k . T) H(k)``, which
  is exact for the Born-von Karman (BvK) supercell: ``H_BvK(T) = sum_L H(T + L)`` over the
  supercell lattice ``L = (N_1 n_1, N_2 n_2, N_3 n_3)``.
* Labels of a k-point SCF are stored per pair at the **minimum-image representative** of
  its BvK class: for each (i, j) and each class ``T mod N``, the T of smallest
  ``|r_j + T @ cell - r_i|``. Representatives that tie within ``TIE_TOLERANCE`` are all
  kept, each with weight ``1 / multiplicity`` (as Wannier90 does for its Wigner-Seitz
  interpolation), so that the weighted Bloch sum reproduces H(k) exactly on the mesh and
  symmetrically between the tied images off it. ``alias_distance`` is the distance of the
  nearest other member of the class: the nearest image whose block is summed into the
  stored one. PySCF lattice-sums the AOs of a low-dimensional cell (``cell.dimension`` 2 or
  1) along its vacuum lattice vector as well (``cell.get_lattice_Ls``), so its k-point
  matrices fold in the images along that axis too (mesh 1 there): they count as aliases
  (``fold_axes``), and a vacuum large enough that blocks at that distance vanish keeps the
  stored T = 0 blocks those of the isolated layer.

Everything here is numpy on plain arrays so that a JAX version can mirror it one to one
(``bloch_sum`` is an einsum over translations).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np

TIE_TOLERANCE = 1e-6  # Angstrom: minimum-image representatives closer than this tie.


class PairList(NamedTuple):
    """Atom pairs across periodic images, in lexicographic ``(i, j, T_1, T_2, T_3)`` order.

    Attributes:
      i: int64 ``[P]`` atom in the home cell.
      j: int64 ``[P]`` atom in cell ``T``.
      translation: int64 ``[P, 3]`` integer lattice translation T (0 along non-periodic axes).
      vector: float64 ``[P, 3]`` ``r_j + T @ cell - r_i`` (Angstrom).
      distance: float64 ``[P]`` its length.
    """

    i: np.ndarray
    j: np.ndarray
    translation: np.ndarray
    vector: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.i.shape[0])


def as_cell(cell, pbc) -> tuple[np.ndarray, np.ndarray]:
    """``(cell float64 [3, 3], pbc bool [3])`` from array-likes; shapes checked."""
    cell = np.asarray(cell, np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,)).copy()
    if cell.shape != (3, 3):
        raise ValueError(f"cell must be [3, 3] (rows = lattice vectors), got shape "
                         f"{list(cell.shape)}")
    return cell, pbc


def completed_cell(cell, pbc) -> np.ndarray:
    """The cell with every non-periodic row that is zero replaced by a unit vector normal to
    the periodic ones (only for fractional coordinates along periodic axes; a non-periodic
    row that is given is kept).

    Raises:
      ValueError: the result is singular (periodic vectors zero or linearly dependent).
    """
    cell, pbc = as_cell(cell, pbc)
    full = cell.copy()
    missing = [a for a in range(3) if not pbc[a] and not np.any(full[a])]
    for a in missing:
        others = [full[b] for b in range(3) if b != a and np.any(full[b])]
        if len(others) == 2:
            v = np.cross(others[0], others[1]) if a != 1 else np.cross(others[1], others[0])
        elif len(others) == 1:
            v = np.cross(others[0], np.eye(3)[int(np.argmin(np.abs(others[0])))])
        else:
            v = np.eye(3)[a]
        full[a] = v / max(np.linalg.norm(v), 1e-300)
    lengths = np.linalg.norm(full, axis=1)
    if np.any(lengths == 0) or abs(np.linalg.det(full)) <= 1e-10 * np.prod(lengths):
        raise ValueError("the lattice vectors are linearly dependent (a singular cell)")
    return full


def fractional(coords, cell, pbc) -> np.ndarray:
    """Fractional coordinates ``[n, 3]`` (``coords = frac @ cell``; non-periodic zero rows
    completed by :func:`completed_cell`)."""
    return np.asarray(coords, np.float64) @ np.linalg.inv(completed_cell(cell, pbc))


def _translation_box(dfrac_min, dfrac_max, recip_norm, cutoff, pbc) -> list[range]:
    """Per axis, the T_a that can give |d| < cutoff for fractional differences in range."""
    box = []
    for a in range(3):
        if not pbc[a]:
            box.append(range(0, 1))
            continue
        reach = cutoff * recip_norm[a]  # |frac_a(d)| <= |d| |b_a|
        box.append(range(int(np.floor(-reach - dfrac_max[a])),
                         int(np.ceil(reach - dfrac_min[a])) + 1))
    return box


def image_pairs(coords, cell, pbc, cutoff: float, include_self: bool = False) -> PairList:
    """All ``(i, j, T)`` with ``|r_j + T @ cell - r_i| < cutoff``.

    Only ``(i, i, 0)`` is excluded (unless ``include_self``): a cell smaller than the cutoff
    gives several images of one pair and an atom's own images (``i = j``, ``T != 0``).

    Args:
      coords: ``[n, 3]`` Cartesian coordinates (Angstrom), anywhere (not necessarily wrapped).
      cell: ``[3, 3]`` rows = lattice vectors (Angstrom).
      pbc: ``[3]`` periodic axes; T is 0 along the others.
      cutoff: Angstrom, strict (a pair at exactly ``cutoff`` is left out).
      include_self: also list ``(i, i, 0)`` (distance 0).

    Returns:
      :class:`PairList` in lexicographic ``(i, j, T)`` order (deterministic).
    """
    xyz = np.asarray(coords, np.float64).reshape(-1, 3)
    cell, pbc = as_cell(cell, pbc)
    full = completed_cell(cell, pbc)
    inv = np.linalg.inv(full)
    frac = xyz @ inv  # [n, 3]
    recip_norm = np.linalg.norm(inv, axis=0)  # |b_a|, b_a = column a of inv(cell)
    dfrac = frac[None, :, :] - frac[:, None, :]  # [n, n, 3] f_j - f_i
    box = _translation_box(dfrac.reshape(-1, 3).min(0), dfrac.reshape(-1, 3).max(0),
                           recip_norm, cutoff, pbc)
    shifts = np.array(list(itertools.product(*box)), np.int64).reshape(-1, 3)  # [S, 3]
    shift_cart = shifts @ cell  # [S, 3]
    out = {k: [] for k in PairList._fields}
    n = xyz.shape[0]
    for i in range(n):  # memory O(n S) per atom
        vec = xyz[None, :, None, :] - xyz[i][None, None, None, :] + shift_cart[None, None]
        vec = vec[0]  # [n, S, 3]
        dist = np.linalg.norm(vec, axis=-1)  # [n, S]
        keep = dist < cutoff
        if not include_self:
            zero = np.flatnonzero(~shifts.any(1))
            keep[i, zero] = False
        j_idx, s_idx = np.nonzero(keep)
        out["i"].append(np.full(len(j_idx), i, np.int64))
        out["j"].append(j_idx.astype(np.int64))
        out["translation"].append(shifts[s_idx])
        out["vector"].append(vec[j_idx, s_idx])
        out["distance"].append(dist[j_idx, s_idx])
    pairs = {k: (np.concatenate(v) if v else np.zeros((0,) + ((3,) if k in ("translation",
              "vector") else ()), np.int64 if k in ("i", "j", "translation") else np.float64))
             for k, v in out.items()}
    order = np.lexsort((pairs["translation"][:, 2], pairs["translation"][:, 1],
                        pairs["translation"][:, 0], pairs["j"], pairs["i"]))
    return PairList(*(pairs[k][order] for k in PairList._fields))


def check_kmesh(kmesh, pbc) -> np.ndarray:
    """int64 ``[3]`` k-mesh, checked: positive, and 1 along every non-periodic axis."""
    mesh = np.asarray(kmesh, np.int64).reshape(-1)
    if mesh.shape != (3,) or np.any(mesh < 1):
        raise ValueError(f"kmesh must be three positive integers (NX, NY, NZ), got {kmesh!r}")
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    if np.any(mesh[~pbc] != 1):
        raise ValueError(f"kmesh {mesh.tolist()} has more than one k-point along a "
                         f"non-periodic axis (pbc {pbc.tolist()}): use 1 there")
    return mesh


def mp_kpts(kmesh) -> np.ndarray:
    """The Gamma-centred Monkhorst-Pack mesh ``[N, 3]`` (fractional, ``k_a = n_a / N_a``,
    ``0 <= n_a < N_a``) in PySCF's ``cell.make_kpts(kmesh)`` order (last axis fastest)."""
    mesh = np.asarray(kmesh, np.int64)
    grid = np.array(list(itertools.product(*(range(int(m)) for m in mesh))), np.float64)
    return grid / mesh


def bvk_translations(kmesh) -> np.ndarray:
    """int64 ``[N, 3]`` canonical translations of the BvK supercell, ``0 <= T_a < N_a``."""
    mesh = np.asarray(kmesh, np.int64)
    return np.array(list(itertools.product(*(range(int(m)) for m in mesh))), np.int64)


def bloch_sum(blocks_t, translations, kpts_frac) -> np.ndarray:
    """``H(k) = sum_T exp(+2 pi i k . T) H(T)`` (the sign of PySCF's k-point matrices).

    Args:
      blocks_t: ``[n_T, ...]`` real-space matrices or blocks, one per translation.
      translations: ``[n_T, 3]`` integer translations T.
      kpts_frac: ``[n_k, 3]`` k-points in fractional reciprocal coordinates.

    Returns:
      complex128 ``[n_k, ...]``.
    """
    blocks_t = np.asarray(blocks_t)
    t = np.asarray(translations, np.float64).reshape(-1, 3)
    k = np.asarray(kpts_frac, np.float64).reshape(-1, 3)
    if blocks_t.shape[0] != t.shape[0]:
        raise ValueError(f"{blocks_t.shape[0]} blocks but {t.shape[0]} translations")
    phase = np.exp(2j * np.pi * (k @ t.T))  # [n_k, n_T]
    return np.tensordot(phase, blocks_t, axes=(1, 0))


def _mesh_index(kpts_frac, kmesh) -> np.ndarray:
    """For each k-point, its integer mesh index ``n = k N mod N`` [n_k, 3]; checks that the
    k-points are exactly the Gamma-centred mesh (any order)."""
    mesh = np.asarray(kmesh, np.int64)
    k = np.asarray(kpts_frac, np.float64).reshape(-1, 3)
    scaled = k * mesh
    idx = np.rint(scaled)
    if np.abs(scaled - idx).max(initial=0.0) > 1e-6:
        raise ValueError(f"the k-points are not on the Gamma-centred {mesh.tolist()} mesh "
                         "(k * N must be integers): real_space_blocks needs that mesh")
    idx = np.mod(idx.astype(np.int64), mesh)
    flat = np.ravel_multi_index(idx.T, mesh)
    if len(k) != int(np.prod(mesh)) or len(np.unique(flat)) != len(k):
        raise ValueError(f"{len(k)} k-points do not cover the {mesh.tolist()} mesh once each")
    return idx


def real_space_blocks(mats_k, kmesh, kpts_frac, imag_tol: float = 1e-7
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse Bloch transform over the BvK supercell of a Gamma-centred k-mesh.

    ``H_BvK(T) = (1/N) sum_k exp(-2 pi i k . T) H(k)`` for the N canonical translations
    ``0 <= T_a < N_a``: exact (``bloch_sum`` of the result gives back ``mats_k``), and equal
    to ``sum_L H(T + L)`` over the supercell lattice. For a real AO basis and a
    time-reversal-symmetric H the result is real; its imaginary part is checked.

    Args:
      mats_k: ``[n_k, ...]`` matrices at the k-points (e.g. ``mf.get_fock()`` per k).
      kmesh: ``[3]`` mesh sizes.
      kpts_frac: ``[n_k, 3]`` their fractional coordinates (``cell.get_scaled_kpts``), the
        mesh in any order.
      imag_tol: largest imaginary part accepted (absolute).

    Returns:
      ``(translations int64 [N, 3], mats_t float64 [N, ...])``.

    Raises:
      ValueError: k-points not the full mesh, or an imaginary part above ``imag_tol``.
    """
    mats_k = np.asarray(mats_k)
    mesh = np.asarray(kmesh, np.int64)
    _mesh_index(kpts_frac, mesh)
    trans = bvk_translations(mesh)
    phase = np.exp(-2j * np.pi * (np.asarray(kpts_frac, np.float64) @ trans.T.astype(float)))
    mats_t = np.tensordot(phase.T, mats_k, axes=(1, 0)) / len(phase)  # [N, ...]
    worst = float(np.abs(mats_t.imag).max(initial=0.0))
    if worst > imag_tol:
        raise ValueError(f"H(T) from the k-mesh has an imaginary part of {worst:.2e}: the "
                         "k-point matrices are not those of a real, time-reversal-symmetric "
                         "operator on the full mesh")
    return trans, np.ascontiguousarray(mats_t.real)


class BvKPairs(NamedTuple):
    """Minimum-image representatives of the BvK classes of atom pairs (see module docstring).

    Attributes:
      pairs: :class:`PairList` of the stored pairs (on-site ``(i, i, 0)`` included), in
        lexicographic order.
      weight: float64 ``[P]`` ``1 / multiplicity`` of tied representatives (1 for unique).
      alias_distance: float64 ``[P]`` distance of the nearest other member of the pair's BvK
        class (inf when the class has one member, e.g. a 1-point mesh along every axis of a
        molecule-like cell).
      bvk_index: int64 ``[P, 3]`` the class ``T mod N``.
      n_beyond_bvk: number of pairs within the cutoff that are not stored because another
        member of their class is closer (a bigger mesh would give them).
    """

    pairs: PairList
    weight: np.ndarray
    alias_distance: np.ndarray
    bvk_index: np.ndarray
    n_beyond_bvk: int


def bvk_pairs(coords, cell, pbc, kmesh, cutoff: float | None = None,
              fold_axes=None) -> BvKPairs:
    """The pairs a k-point calculation on ``kmesh`` determines, at their minimum images.

    For every (i, j) and every BvK class ``T mod N`` the representative T of smallest
    ``|r_j + T @ cell - r_i|`` is kept when that distance is below ``cutoff`` (None: every
    class, so that ``bloch_sum`` reproduces the mesh exactly). Ties within
    :data:`TIE_TOLERANCE` are all kept with weight ``1 / multiplicity``.

    Args:
      coords, cell, pbc: the structure (T is 0 along non-periodic axes).
      kmesh: the Monkhorst-Pack mesh.
      cutoff: Angstrom, or None.
      fold_axes: bool ``[3]`` non-periodic axes along which the k-point matrices were
        nevertheless lattice-summed (PySCF's low-dimensional cells sum AO images along the
        vacuum lattice vector too): their images count as aliases in ``alias_distance``.

    Returns:
      :class:`BvKPairs`.
    """
    xyz = np.asarray(coords, np.float64).reshape(-1, 3)
    n = len(xyz)
    cell, pbc = as_cell(cell, pbc)
    mesh = check_kmesh(kmesh, pbc)
    full = completed_cell(cell, pbc)
    sup = full * mesh[:, None]  # BvK supercell (rows)
    inv_sup = np.linalg.inv(sup)
    per = np.flatnonzero(pbc)
    spacing = 1.0 / np.linalg.norm(inv_sup[:, per], axis=0) if per.size else np.zeros(0)
    classes = bvk_translations(mesh)  # [K, 3] canonical classes, 0 on non-periodic axes
    class_cart = classes @ cell
    # Per pair and class: wrap the vector into the supercell, then search supercell shifts
    # within +-reach; a member outside that box is at least (reach + 1/2) plane spacings
    # away, which certifies the nearest two found (widening the box when it does not).
    for reach in (2, 3, 4, 6, 8):
        box = [range(-reach, reach + 1) if pbc[a] else range(1) for a in range(3)]
        offsets = np.array(list(itertools.product(*box)), np.int64)  # [M, 3]
        bound = (reach + 0.5) * spacing.min() if per.size else np.inf
        rows, worst = [], 0.0
        for i in range(n):
            base = (xyz - xyz[i])[:, None, :] + class_cart[None]  # [n, K, 3]
            frac = base @ inv_sup
            wrap = np.where(pbc, -np.rint(frac), 0.0).astype(np.int64)  # supercell shifts
            t0 = classes[None] + wrap * mesh  # [n, K, 3] unit-cell translations
            t = t0[:, :, None, :] + offsets[None, None] * mesh  # [n, K, M, 3]
            dist = np.linalg.norm((xyz - xyz[i])[:, None, None, :] + t @ cell, axis=-1)
            order = np.argsort(dist, axis=-1, kind="stable")
            d_sorted = np.take_along_axis(dist, order, -1)  # [n, K, M]
            tied = d_sorted <= d_sorted[..., :1] + TIE_TOLERANCE
            mult = tied.sum(-1)  # [n, K]
            nxt = np.where(tied, np.inf, d_sorted).min(-1) if d_sorted.shape[-1] > 1 else \
                np.full(mult.shape, np.inf)
            alias = np.where(mult > 1, d_sorted[..., 0], nxt)
            worst = max(worst, float(np.max(np.where(np.isfinite(alias), alias, 0.0))))
            rows.append((i, t, order, d_sorted, tied, mult, alias))
        if worst < bound:
            break
    else:
        raise ValueError("bvk_pairs: the lattice is too skewed to find minimum images within "
                         "8 supercell shifts; use a reduced (less oblique) cell")
    out = {k: [] for k in ("i", "j", "t", "d", "w", "alias", "cls")}
    for i, t, order, d_sorted, tied, mult, alias in rows:
        jj, kk, mm = np.nonzero(tied)
        if cutoff is not None:
            keep = d_sorted[jj, kk, mm] < cutoff
            jj, kk, mm = jj[keep], kk[keep], mm[keep]
        out["i"].append(np.full(len(jj), i, np.int64))
        out["j"].append(jj)
        out["t"].append(t[jj, kk, order[jj, kk, mm]])
        out["d"].append(d_sorted[jj, kk, mm])
        out["w"].append(1.0 / mult[jj, kk])
        out["alias"].append(alias[jj, kk])
        out["cls"].append(classes[kk])
    cat = {k: np.concatenate(v) if v else np.zeros((0, 3) if k in ("t", "cls") else (0,))
           for k, v in out.items()}
    t_all = cat["t"].astype(np.int64).reshape(-1, 3)
    srt = np.lexsort((t_all[:, 2], t_all[:, 1], t_all[:, 0], cat["j"], cat["i"]))
    i_s, j_s, t_s = cat["i"][srt].astype(np.int64), cat["j"][srt].astype(np.int64), t_all[srt]
    vec = xyz[j_s] + t_s @ cell - xyz[i_s]
    pairs = PairList(i_s, j_s, t_s, vec, cat["d"][srt])
    alias_sel = cat["alias"][srt]
    fold = np.zeros(3, bool) if fold_axes is None else np.asarray(fold_axes, bool) & ~pbc
    for a in np.flatnonzero(fold):
        if np.any(cell[a]):
            for m in (-2, -1, 1, 2):
                alias_sel = np.minimum(alias_sel, np.linalg.norm(vec + m * cell[a], axis=1))
    n_beyond = 0
    if cutoff is not None:
        n_beyond = len(image_pairs(xyz, cell, pbc, cutoff, include_self=True)) - len(pairs)
    return BvKPairs(pairs=pairs, weight=cat["w"][srt], alias_distance=alias_sel,
                    bvk_index=np.asarray(cat["cls"][srt], np.int64).reshape(-1, 3),
                    n_beyond_bvk=int(n_beyond))


def ao_offsets(n_ao_per_atom: Sequence[int]) -> np.ndarray:
    """int64 ``[n + 1]`` first AO of each atom (and the total) from per-atom AO counts."""
    return np.concatenate([[0], np.cumsum(np.asarray(n_ao_per_atom, np.int64))])


def block_offsets(i, j, n_ao_per_atom) -> np.ndarray:
    """int64 ``[P + 1]`` offsets of the row-major blocks ``[n_i, n_j]`` of pairs (i, j) in
    a flat concatenation."""
    n = np.asarray(n_ao_per_atom, np.int64)
    return np.concatenate([[0], np.cumsum(n[np.asarray(i)] * n[np.asarray(j)])])


def gather_blocks(mats_t, translations, pair_i, pair_j, pair_bvk, n_ao_per_atom
                  ) -> np.ndarray:
    """Flat concatenation of the blocks ``mats_t[class][ao_i, ao_j]`` of pairs.

    Args:
      mats_t: ``[N, nao, nao]`` matrices of the canonical BvK translations.
      translations: ``[N, 3]`` their T (as from :func:`real_space_blocks`).
      pair_i, pair_j: ``[P]`` atoms.
      pair_bvk: ``[P, 3]`` class of each pair (``T mod kmesh``).
      n_ao_per_atom: ``[n]`` AO counts.

    Returns:
      float ``[sum n_i n_j]`` row-major blocks in pair order.
    """
    off = ao_offsets(n_ao_per_atom)
    where = {tuple(t): k for k, t in enumerate(np.asarray(translations).tolist())}
    out = []
    for a, b, t in zip(np.asarray(pair_i), np.asarray(pair_j), np.asarray(pair_bvk).tolist()):
        out.append(mats_t[where[tuple(t)], off[a]:off[a + 1], off[b]:off[b + 1]].reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)


def assemble_translations(pair_i, pair_j, translations, blocks, offsets, n_ao_per_atom,
                          weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Full matrices ``H(T) [n_T, nao, nao]`` from pair blocks (weights applied).

    Args:
      pair_i, pair_j: ``[P]`` atoms; translations ``[P, 3]``.
      blocks: flat ``[sum n_i n_j]`` blocks; offsets ``[P + 1]``.
      n_ao_per_atom: ``[n]``.
      weight: ``[P]`` or None (all 1).

    Returns:
      ``(unique translations int64 [n_T, 3], matrices float [n_T, nao, nao])``.
    """
    trans = np.asarray(translations, np.int64).reshape(-1, 3)
    uniq, inv = np.unique(trans, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    off = ao_offsets(n_ao_per_atom)
    nao = int(off[-1])
    blocks = np.asarray(blocks)
    mats = np.zeros((len(uniq), nao, nao), blocks.dtype)
    w = np.ones(len(trans)) if weight is None else np.asarray(weight, np.float64)
    for p, (a, b) in enumerate(zip(np.asarray(pair_i), np.asarray(pair_j))):
        blk = blocks[offsets[p]:offsets[p + 1]].reshape(off[a + 1] - off[a], off[b + 1] - off[b])
        mats[inv[p], off[a]:off[a + 1], off[b]:off[b + 1]] += w[p] * blk
    return uniq, mats


def bands(h_k, s_k, s_threshold: float = 1e-10) -> np.ndarray:
    """Eigenvalues ``[n_k, nao]`` of ``H(k) c = e S(k) c`` (ascending), via canonical
    orthogonalisation dropping S eigenvalues below ``s_threshold`` (NaN-padded then)."""
    h_k, s_k = np.asarray(h_k), np.asarray(s_k)
    out = np.full(h_k.shape[:2], np.nan)
    for n, (h, s) in enumerate(zip(h_k, s_k)):
        w, v = np.linalg.eigh(0.5 * (s + s.conj().T))
        x = v[:, w > s_threshold] / np.sqrt(w[w > s_threshold])
        e = np.linalg.eigvalsh(x.conj().T @ (0.5 * (h + h.conj().T)) @ x)
        out[n, :len(e)] = e
    return out


def pack_pairs(i, j, translations, *block_lists, n_ao_per_atom
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Sorts pairs into lexicographic ``(i, j, T)`` order and packs their blocks flat.

    Args:
      i, j: ``[P]`` atoms; translations: ``[P, 3]``.
      *block_lists: one or more lists of P ``[n_i, n_j]`` blocks (e.g. H and S).
      n_ao_per_atom: ``[n]`` AO counts (the blocks' shapes are checked against them).

    Returns:
      ``(order [P], pairs int32 [P, 2], translations int32 [P, 3], [flat blocks per list],
      offsets int64 [P + 1])``; ``order`` maps the sorted pairs to the input positions.

    Raises:
      ValueError: a duplicate pair or a block of the wrong shape.
    """
    i = np.asarray(i, np.int64).reshape(-1)
    j = np.asarray(j, np.int64).reshape(-1)
    t = np.asarray(translations, np.int64).reshape(-1, 3)
    order = np.lexsort((t[:, 2], t[:, 1], t[:, 0], j, i))
    key = np.stack([i, j, *t.T], 1)[order]
    if len(key) > 1 and np.any(np.all(key[1:] == key[:-1], axis=1)):
        dup = key[1:][np.all(key[1:] == key[:-1], axis=1)][0]
        raise ValueError(f"pair (i, j, T) = ({dup[0]}, {dup[1]}, {dup[2:].tolist()}) appears "
                         "twice")
    n = np.asarray(n_ao_per_atom, np.int64)
    flats = []
    for blocks in block_lists:
        out = []
        for p in order:
            b = np.asarray(blocks[p], np.float64)
            if b.shape != (n[i[p]], n[j[p]]):
                raise ValueError(f"block of pair ({i[p]}, {j[p]}, {t[p].tolist()}) has shape "
                                 f"{list(b.shape)}, its atoms have [{n[i[p]]}, {n[j[p]]}] AOs")
            out.append(b.reshape(-1))
        flats.append(np.concatenate(out) if out else np.zeros(0))
    return (order, np.stack([i[order], j[order]], 1).astype(np.int32),
            t[order].astype(np.int32), flats, block_offsets(i[order], j[order], n))


def labels_to_k(labels, kpts_frac, which: str = "fock") -> np.ndarray:
    """``H(k)`` (or ``S(k)`` with ``which="overlap"``) ``[n_k, nao, nao]`` of
    :class:`helm_jax.data.records.PeriodicLabels`: the weighted Bloch sum of its blocks."""
    flat = labels.fock_blocks if which == "fock" else labels.overlap_blocks
    t, mats = assemble_translations(labels.pairs[:, 0], labels.pairs[:, 1],
                                    labels.translations, flat, labels.block_offsets,
                                    labels.n_ao_per_atom, labels.weight)
    return bloch_sum(mats, t, kpts_frac)


# ------------------------------------------------------------------ high-symmetry paths

#: Special points in fractional reciprocal coordinates (``k_cart = 2 pi k @ inv(cell).T``).
#: hex2d: 2-D hexagonal lattice with the 120-degree cell (a1 = a (1, 0), a2 = a (-1/2,
#: sqrt(3)/2)); the 60-degree cell has K at (2/3, 1/3) instead (same M). fcc: Setyawan and
#: Curtarolo (Comput. Mater. Sci. 49, 299 (2010)), fractional coordinates of the reciprocal
#: of their primitive fcc cell a1 = a/2 (0, 1, 1), a2 = a/2 (1, 0, 1), a3 = a/2 (1, 1, 0)
#: (ASE's ``bulk(..., "fcc" | "diamond")`` cell).
SPECIAL_POINTS = {
    "hex2d": {"G": (0.0, 0.0, 0.0), "K": (1 / 3, 1 / 3, 0.0), "M": (0.5, 0.0, 0.0)},
    "hex2d_60": {"G": (0.0, 0.0, 0.0), "K": (2 / 3, 1 / 3, 0.0), "M": (0.5, 0.0, 0.0)},
    "fcc": {"G": (0.0, 0.0, 0.0), "X": (0.5, 0.0, 0.5), "W": (0.5, 0.25, 0.75),
            "K": (0.375, 0.375, 0.75), "L": (0.5, 0.5, 0.5), "U": (0.625, 0.25, 0.625)},
}
PATHS = {"hex2d": ("G", "K", "M", "G"), "fcc": ("G", "X", "W", "K", "G", "L")}
PATH_KINDS = tuple(PATHS)


def _describe_lattice(cell: np.ndarray, pbc: np.ndarray) -> str:
    """``"2-D lattice |a1| = 2.460 A, |a2| = 3.100 A, gamma = 90.0 deg"`` and the like."""
    per = np.flatnonzero(pbc)
    lengths = np.linalg.norm(cell, axis=1)

    def angle(a, b):
        c = cell[a] @ cell[b] / max(lengths[a] * lengths[b], 1e-300)
        return float(np.degrees(np.arccos(np.clip(c, -1, 1))))

    if len(per) == 2:
        return (f"2-D lattice |a1| = {lengths[0]:.3f} A, |a2| = {lengths[1]:.3f} A, "
                f"gamma = {angle(0, 1):.1f} deg")
    if len(per) == 3:
        return (f"3-D lattice |a1|, |a2|, |a3| = {lengths[0]:.3f}, {lengths[1]:.3f}, "
                f"{lengths[2]:.3f} A, angles (a2 a3, a1 a3, a1 a2) = {angle(1, 2):.1f}, "
                f"{angle(0, 2):.1f}, {angle(0, 1):.1f} deg")
    return f"a {len(per)}-D lattice (pbc {pbc.tolist()})"


def detect_path_kind(cell, pbc, length_tol: float = 0.08, angle_tol: float = 6.0) -> str:
    """``"hex2d"`` or ``"fcc"`` for a (possibly strained) cell, else ValueError.

    hex2d: pbc ``(T, T, F)``, ``|a1| = |a2|`` within ``length_tol`` (relative) and an angle
    of 120 or 60 degrees within ``angle_tol`` (degrees). fcc: pbc all true, three equal
    lengths and all three angles 60 degrees within the same tolerances (the primitive fcc
    cell). The tolerances admit the few-percent strains of ``make_periodic_cells.py``.
    """
    cell, pbc = as_cell(cell, pbc)
    lengths = np.linalg.norm(cell, axis=1)

    def angle(a, b):
        c = cell[a] @ cell[b] / max(lengths[a] * lengths[b], 1e-300)
        return float(np.degrees(np.arccos(np.clip(c, -1, 1))))

    def same(*ls):
        return (max(ls) - min(ls)) <= length_tol * max(ls)

    if pbc.tolist() == [True, True, False] and lengths[0] > 0 and lengths[1] > 0:
        if same(lengths[0], lengths[1]) and min(abs(angle(0, 1) - 120),
                                                abs(angle(0, 1) - 60)) <= angle_tol:
            return "hex2d"
    if pbc.all() and np.all(lengths > 0) and same(*lengths) and all(
            abs(angle(a, b) - 60) <= angle_tol for a, b in ((0, 1), (0, 2), (1, 2))):
        return "fcc"
    raise ValueError(
        f"high_symmetry_path: no known path for this cell: {_describe_lattice(cell, pbc)} "
        f"(pbc {pbc.tolist()}). Known: 'hex2d' (pbc T T F, |a1| = |a2|, 120 or 60 degrees) "
        "and 'fcc' (the primitive fcc cell: three equal vectors at 60 degrees); pass "
        "kind='hex2d' or kind='fcc' to use their fractional points anyway")


def high_symmetry_path(cell, pbc, n_points: int, kind: str | None = None
                       ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """k-points along a high-symmetry path, evenly spaced in Cartesian length.

    Paths: ``"hex2d"`` G-K-M-G (K = (1/3, 1/3, 0) for the 120-degree cell, (2/3, 1/3, 0)
    for the 60-degree one; M = (1/2, 0, 0)); ``"fcc"`` G-X-W-K-G-L with Setyawan-Curtarolo's
    points (:data:`SPECIAL_POINTS`) for the primitive fcc cell. A distorted (strained) cell
    uses the **same fractional points** as the ideal one: they are then no longer exactly
    the high-symmetry points of the distorted lattice (whose symmetry is lower), but the
    path is the same in fractional coordinates across a dataset of strained frames, and the
    Cartesian spacing follows the frame's own reciprocal lattice.

    The ``n_points`` points are spread over the segments in proportion to their Cartesian
    lengths (at least one interval per segment), evenly within each segment, with every
    special point (segment ends) included exactly.

    Args:
      cell: ``[3, 3]`` rows = lattice vectors (Angstrom).
      pbc: ``[3]``.
      n_points: total number of points P (>= number of special points on the path).
      kind: ``"hex2d"``, ``"fcc"`` or None (detected by :func:`detect_path_kind`).

    Returns:
      ``(kpts_frac float64 [P, 3], x float64 [P], labels)``: fractional k-points
      (``k_cart = 2 pi k @ inv(cell).T``), the cumulative Cartesian path length in 1/Angstrom
      (2 pi included), and ``[(index, name), ...]`` of the special points ("G" = Gamma).

    Raises:
      ValueError: an unknown lattice with ``kind=None`` (the message names it), an unknown
        ``kind``, a ``kind`` whose periodicity does not match ``pbc``, or too few points.
    """
    cell, pbc = as_cell(cell, pbc)
    if kind is None:
        kind = detect_path_kind(cell, pbc)
    if kind not in PATHS:
        raise ValueError(f"high_symmetry_path: kind {kind!r}: use one of {PATH_KINDS} or None")
    want = [True, True, False] if kind == "hex2d" else [True, True, True]
    if pbc.tolist() != want:
        raise ValueError(f"high_symmetry_path: kind {kind!r} needs pbc {want}, the cell has "
                         f"{pbc.tolist()}")
    names = PATHS[kind]
    if int(n_points) < len(names):
        raise ValueError(f"high_symmetry_path: {n_points} points; the {'-'.join(names)} path "
                         f"needs at least {len(names)}")
    table = SPECIAL_POINTS[kind]
    if kind == "hex2d" and cell[0] @ cell[1] > 0:  # the 60-degree cell
        table = SPECIAL_POINTS["hex2d_60"]
    verts = np.array([table[n] for n in names], np.float64)  # [V, 3]
    recip = 2 * np.pi * np.linalg.inv(completed_cell(cell, pbc)).T  # rows b_a, 1/Angstrom
    seg_len = np.linalg.norm(np.diff(verts, axis=0) @ recip, axis=1)  # [V - 1]
    n_int = int(n_points) - 1
    n_seg = len(seg_len)
    share = seg_len / seg_len.sum() * n_int
    counts = np.maximum(1, np.floor(share).astype(int))
    while counts.sum() < n_int:  # largest remainder first
        counts[int(np.argmax(share - counts))] += 1
    while counts.sum() > n_int:
        over = np.where(counts > 1, counts - share, -np.inf)
        counts[int(np.argmax(over))] -= 1
    kpts, labels = [verts[0][None]], [(0, names[0])]
    for s in range(n_seg):
        t = np.arange(1, counts[s] + 1)[:, None] / counts[s]
        kpts.append(verts[s] + t * (verts[s + 1] - verts[s]))
        labels.append((int(counts[:s + 1].sum()), names[s + 1]))
    kpts = np.concatenate(kpts)
    kpts[np.abs(kpts) < 1e-15] = 0.0
    steps = np.linalg.norm(np.diff(kpts, axis=0) @ recip, axis=1)
    x = np.concatenate([[0.0], np.cumsum(steps)])
    return kpts, x, labels
