"""AO orders of public datasets (ORCA, Psi4, OMol_CSH, CP2K, DeepH) <-> PySCF AO order.

A convention is a per-molecule AO transform ``(perm, sign)``: a matrix ``M_f`` in the
foreign order maps to PySCF order as ``M_p = sign[:, None] * sign[None, :] * M_f[perm][:,
perm]``. Two things differ between codes:

* The order of the ``2l+1`` AOs of a shell (the m order) and their signs. ORCA and Psi4
  order m as ``0, +1, -1, +2, -2, ...``. To the standard ``m = -l..l`` order the gather
  maps are p ``[2, 0, 1]``, d ``[4, 2, 0, 1, 3]``, f ``[6, 4, 2, 0, 1, 3, 5]``; ORCA
  additionally flips the sign of ``m = +-3`` (f) and ``m = +-3, +-4`` (g). PySCF orders p as
  ``(px, py, pz)`` (not ``m = -1, 0, 1``) and l >= 2 as ``m = -l..l``.
* The order of an atom's shells. PySCF groups shells by l. ORCA appends the diffuse shells of
  def2-TZVPD after the valence shells (``conventions_data/orca_def2_tzvpd_shell_order.json``);
  for other bases ORCA and Psi4 shells are grouped by l like PySCF's. Shells of equal l keep
  their relative order in every code (the k-th p shell is the k-th p shell).

CP2K orders the spherical AOs of a shell as ``m = -l..l`` (p as y, z, x:
``src/aobasis/orbital_symbols.F``) with the real solid harmonics of Schlegel and Frisch
(Int. J. Quantum Chem. 54, 83 (1995), eq. 15, CP2K's ``orbital_transformation_matrices.F``),
whose signs equal PySCF's for every l (tests/test_periodic_readers.py evaluates that formula
against PySCF's AOs for l = 0..4): only p differs, gather ``[2, 0, 1]``. DeepH-pack stores
the OpenMX order (``deeph/rotate.py``, ``Us_openmx2wiki``): p as x, y, z; d as ``z^2, x^2-y^2,
xy, xz, yz``; f as ``m = 0, +1, -1, +2, -2, +3, -3``; no sign changes relative to the real
harmonics PySCF uses (tests check d and f against those Cartesian forms); l >= 4 is not
defined there. Both group an atom's shells as the file says (DeepH: ``orbital_types.dat``;
CP2K: the basis set's order, grouped by l for the MOLOPT and def2-type sets the HELM
reference uses, which is what ``foreign_shell_order`` assumes).

OMol_CSH quirk: its stored Fock matrices were m-reordered (ORCA -> standard m order, with the
ORCA sign flips) using an l-SORTED shell list instead of the true ORCA shell order. To read
them, undo that reordering with the sorted list (giving ORCA order), then convert ORCA ->
PySCF with the true shell order (:func:`omol_csh_transform`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple, Sequence

import numpy as np

from helm_jax import basis as basis_lib

CONVENTIONS = ("pyscf", "orca", "psi4", "omol_csh", "cp2k", "deeph")
# Gather maps foreign shell order -> standard m = -l..l, for conventions without sign flips.
_STANDARD_FROM = {
    "cp2k": {},  # m = -l..l already
    "deeph": {1: [1, 2, 0], 2: [2, 4, 0, 3, 1], 3: [6, 4, 2, 0, 1, 3, 5]},
}
_SHELL_ORDER_FILE = os.path.join(os.path.dirname(__file__), "conventions_data",
                                 "orca_def2_tzvpd_shell_order.json")


class AOTransform(NamedTuple):
    """``out = in[perm] * sign`` on AO vectors (rows and columns alike for matrices)."""

    perm: np.ndarray  # [n_ao] int64
    sign: np.ndarray  # [n_ao] float64 (+-1)

    def apply(self, m: np.ndarray) -> np.ndarray:
        """Transforms an AO matrix ``[..., n_ao, n_ao]``."""
        p, s = self.perm, self.sign
        return m[..., p, :][..., :, p] * s[:, None] * s[None, :]

    def inverse(self) -> "AOTransform":
        """The transform that undoes this one."""
        inv = np.argsort(self.perm)
        return AOTransform(inv, self.sign[inv])

    def then(self, other: "AOTransform") -> "AOTransform":
        """This transform followed by ``other``."""
        return AOTransform(self.perm[other.perm], self.sign[other.perm] * other.sign)


def _standard_from_orca(l: int) -> np.ndarray:
    """Gather map ORCA/Psi4 m order (0, +1, -1, ...) -> m = -l..l."""
    return np.array([2 * abs(m) - (m > 0) if m != 0 else 0 for m in range(-l, l + 1)],
                    np.int64)


def _orca_sign(l: int) -> np.ndarray:
    """ORCA's sign flips in standard m order: |m| >= 3."""
    return np.array([-1.0 if abs(m) >= 3 else 1.0 for m in range(-l, l + 1)])


def _pyscf_from_standard(l: int) -> np.ndarray:
    """Gather map standard m = -l..l -> PySCF order (only p differs: x, y, z)."""
    return np.array([2, 0, 1]) if l == 1 else np.arange(2 * l + 1)


def shell_reorder(l: int, convention: str, target: str = "pyscf") -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Within-shell gather and sign from a foreign m order.

    Args:
      l: angular momentum.
      convention: ``"orca"``, ``"psi4"``, ``"omol_csh"``, ``"cp2k"`` or ``"deeph"``.
      target: ``"pyscf"`` or ``"standard"`` (m = -l..l).

    Returns:
      ``(gather [2l+1], sign [2l+1])`` with ``out[k] = in[gather[k]] * sign[k]``.
    """
    if convention in _STANDARD_FROM:
        if convention == "deeph" and l > 3:
            raise ValueError(f"DeepH (OpenMX) AO order is defined for l <= 3, not l = {l}")
        std = np.asarray(_STANDARD_FROM[convention].get(l, np.arange(2 * l + 1)), np.int64)
        sign = np.ones(2 * l + 1)
    elif convention in ("orca", "psi4", "omol_csh"):
        std = _standard_from_orca(l)
        sign = _orca_sign(l) if convention in ("orca", "omol_csh") else np.ones(2 * l + 1)
    else:
        raise ValueError(f"Unknown convention {convention!r}; choose one of {CONVENTIONS}.")
    if target == "standard":
        return std, sign
    p = _pyscf_from_standard(l)
    return std[p], sign[p]


@functools.lru_cache(maxsize=None)
def _orca_tzvpd_orders() -> dict:
    with open(_SHELL_ORDER_FILE) as f:
        return json.load(f)


def foreign_shell_order(z: int, basis: str, ecp: str | None, convention: str) -> list[int]:
    """An element's shell l values in the foreign code's order."""
    pyscf_ls = list(basis_lib.element_basis(z, basis, ecp).shell_l)
    if convention in ("orca", "omol_csh") and basis.lower().replace("_", "-") == "def2-tzvpd":
        orders = _orca_tzvpd_orders()
        sym = basis_lib.symbol(z)
        if sym not in orders:
            raise ValueError(f"No ORCA def2-TZVPD shell order known for {sym}.")
        order = list(orders[sym])
        if sorted(order) != sorted(pyscf_ls):
            raise ValueError(f"ORCA def2-TZVPD shells of {sym} {order} do not match PySCF's "
                             f"{pyscf_ls}.")
        return order
    return sorted(pyscf_ls)


def _within_shells(shell_ls: Sequence[int], convention: str, target: str) -> AOTransform:
    perm, sign, off = [], [], 0
    for l in shell_ls:
        g, s = shell_reorder(l, convention, target)
        perm.append(off + g)
        sign.append(s)
        off += 2 * l + 1
    return AOTransform(np.concatenate(perm), np.concatenate(sign))


def _shell_permutation(from_ls: Sequence[int], to_ls: Sequence[int]) -> AOTransform:
    """AO gather that reorders whole shells from ``from_ls`` order to ``to_ls`` order."""
    from_off = np.concatenate([[0], np.cumsum([2 * l + 1 for l in from_ls])]).astype(int)
    queues = {l: [k for k, lk in enumerate(from_ls) if lk == l] for l in set(from_ls)}
    perm = []
    for l in to_ls:
        k = queues[l].pop(0)
        perm.append(from_off[k] + np.arange(2 * l + 1))
    perm = np.concatenate(perm) if perm else np.zeros(0, np.int64)
    return AOTransform(perm.astype(np.int64), np.ones(len(perm)))


def _molecule(per_atom) -> AOTransform:
    perm, sign, off = [], [], 0
    for t in per_atom:
        perm.append(off + t.perm)
        sign.append(t.sign)
        off += len(t.perm)
    return AOTransform(np.concatenate(perm), np.concatenate(sign))


def to_pyscf_transform(elements: Sequence[int], basis: str, ecp: str | None,
                       convention: str) -> AOTransform:
    """The transform from a convention's AO order to PySCF's for a molecule.

    Args:
      elements: atomic numbers (atom order of the matrix; atoms are never reordered).
      basis: PySCF basis name.
      ecp: ECP name or None.
      convention: one of :data:`CONVENTIONS`.

    Returns:
      :class:`AOTransform` with ``M_pyscf = transform.apply(M_foreign)``.
    """
    if convention == "pyscf":
        n = basis_lib.molecule_n_ao(elements, basis, ecp)
        return AOTransform(np.arange(n), np.ones(n))
    if convention == "omol_csh":
        return omol_csh_transform(elements, basis, ecp)
    per_atom = []
    for z in elements:
        foreign = foreign_shell_order(int(z), basis, ecp, convention)
        pyscf_ls = basis_lib.element_basis(int(z), basis, ecp).shell_l
        per_atom.append(_within_shells(foreign, convention, "pyscf").then(
            _shell_permutation(foreign, pyscf_ls)))
    return _molecule(per_atom)


def omol_csh_transform(elements: Sequence[int], basis: str = "def2-tzvpd",
                       ecp: str | None = "def2-tzvpd") -> AOTransform:
    """Stored OMol_CSH order -> PySCF order (undo the sorted-list quirk, then ORCA -> PySCF)."""
    per_atom = []
    for z in elements:
        true = foreign_shell_order(int(z), basis, ecp, "orca")
        quirk = _within_shells(sorted(true), "orca", "standard")  # what the files applied
        pyscf_ls = basis_lib.element_basis(int(z), basis, ecp).shell_l
        per_atom.append(quirk.inverse().then(_within_shells(true, "orca", "pyscf")).then(
            _shell_permutation(true, pyscf_ls)))
    return _molecule(per_atom)


def atom_to_pyscf_transform(foreign_ls: Sequence[int], pyscf_ls: Sequence[int],
                            convention: str) -> AOTransform:
    """One atom's transform from a foreign AO order with shells ``foreign_ls`` (in the
    file's order) to PySCF's with shells ``pyscf_ls``; shells of equal l keep their order.

    Raises:
      ValueError: the two shell lists are not the same multiset of l.
    """
    if sorted(foreign_ls) != sorted(pyscf_ls):
        raise ValueError(f"shells {list(foreign_ls)} (l values) do not match the basis's "
                         f"{list(pyscf_ls)}: another basis set")
    return _within_shells(foreign_ls, convention, "pyscf").then(
        _shell_permutation(foreign_ls, pyscf_ls))


def apply_to_block(block: np.ndarray, rows: AOTransform, cols: AOTransform) -> np.ndarray:
    """Transforms a rectangular AO block ``[..., n_i, n_j]`` (atom i's AOs by ``rows``,
    atom j's by ``cols``)."""
    b = block[..., rows.perm, :][..., :, cols.perm]
    return b * rows.sign[:, None] * cols.sign[None, :]


def to_pyscf(m: np.ndarray, elements: Sequence[int], basis: str, ecp: str | None,
             convention: str) -> np.ndarray:
    """Converts an AO matrix from a dataset's convention to PySCF order."""
    t = to_pyscf_transform(elements, basis, ecp, convention)
    if m.shape[-1] != len(t.perm) or m.shape[-2] != len(t.perm):
        raise ValueError(
            f"Matrix of shape {m.shape} does not fit the {len(t.perm)} AOs of these "
            f"{len(elements)} atoms in {basis!r}: wrong basis or wrong molecule.")
    return t.apply(m)


def from_pyscf(m: np.ndarray, elements: Sequence[int], basis: str, ecp: str | None,
               convention: str) -> np.ndarray:
    """Converts an AO matrix from PySCF order to a dataset's convention (for writers/tests)."""
    t = to_pyscf_transform(elements, basis, ecp, convention).inverse()
    if m.shape[-1] != len(t.perm):
        raise ValueError(f"Matrix of shape {m.shape} does not fit {len(t.perm)} AOs.")
    return t.apply(m)
