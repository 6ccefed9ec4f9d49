"""Real spherical harmonics: PySCF AOs <-> e3nn-jax basis, AO Wigner matrices, and CG.

Conventions (checked against PySCF by ``tests/test_sph.py`` and ``tests/test_sph_rotation.py``):

* ``Q_l`` (:func:`pyscf_to_e3nn`) is the orthogonal ``[2l+1, 2l+1]`` matrix with
  ``ao_l(r) = Q_l^T y_l(r)`` up to one positive radial factor, where ``ao_l`` are PySCF's
  real AOs of one shell (p as px, py, pz; l >= 2 as m = -l..l about z) and ``y_l`` are
  e3nn-jax's real spherical harmonics. For l >= 2 it is not a signed permutation.
  A matrix block in PySCF AOs maps to the e3nn basis as ``B_e3nn = Q_l1 B Q_l2^T``.
* :func:`ao_wigner` gives ``D_ao(R) = Q_l^T D_e3nn(R) Q_l`` with ``ao(R r) = D_ao ao(r)``.
  For a molecule rotated as ``r -> R r`` every AO-basis operator (S, H, F) transforms as
  ``M(R) = D M D^T`` with ``D`` block diagonal over shells.
* :func:`coupling_matrix` returns the real orthogonal change of basis from the
  ``(2l1+1)(2l2+1)`` entries of an (l1, l2) block (e3nn basis) to the irreps
  ``l3 = |l1-l2| .. l1+l2``: e3nn's Clebsch-Gordan coefficients scaled by
  ``sqrt(2 l3 + 1)`` so the map is orthogonal (an MSE over irreps equals the MSE over
  block entries).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def pyscf_to_e3nn(l: int) -> np.ndarray:
    """The orthogonal matrix ``Q_l`` with ``ao_l = Q_l^T y_l`` (see module docstring).

    Derived numerically from ``pyscf.gto.Mole.eval_gto`` against
    ``e3nn.spherical_harmonics`` on points of the unit sphere, then projected onto the
    nearest orthogonal matrix. Exact to ~1e-15.

    Args:
      l: angular momentum (0..6).

    Returns:
      float64 array ``[2l+1, 2l+1]`` (rows: e3nn components, columns: PySCF AOs).
    """
    import e3nn_jax as e3nn
    import jax
    from pyscf import gto

    if l == 0:
        return np.ones((1, 1))
    rng = np.random.default_rng(1234 + l)
    pts = rng.normal(size=(64 + 8 * l * l, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    # One primitive shell of angular momentum l on a ghost atom at the origin.
    mol = gto.M(atom="ghost-H 0 0 0", basis={"ghost-H": [[l, [1.0, 1.0]]]}, spin=None,
                verbose=0)
    mol.spin = 0
    ao = mol.eval_gto("GTOval_sph", pts)  # [P, 2l+1]; radial factor constant at r=1.
    with jax.enable_x64(True):
        irreps = e3nn.Irreps(f"{l}{'e' if l % 2 == 0 else 'o'}")
        y = np.asarray(e3nn.spherical_harmonics(irreps, pts, normalize=True,
                                                normalization="component").array,
                       dtype=np.float64)
    t, *_ = np.linalg.lstsq(y, ao, rcond=None)  # ao = y @ t
    if np.abs(y @ t - ao).max() > 1e-10 * np.abs(ao).max():
        raise AssertionError(f"PySCF l={l} AOs are not spanned by e3nn's Y_{l}")
    u, s, vt = np.linalg.svd(t)
    if not np.allclose(s, s[0], rtol=1e-6):
        raise AssertionError(f"PySCF and e3nn l={l} bases are not related by a rotation")
    q = u @ vt  # nearest orthogonal matrix; ao ∝ y @ q, i.e. ao = q^T y.
    # Snap the entries that are 0 or +-1 to the exact value (Q_1 is the identity): the last bit
    # of the SVD differs between numpy/LAPACK builds (numpy 2.5 gives 0.9999999999999999).
    q[np.abs(q) < 1e-14] = 0.0
    unit = np.abs(np.abs(q) - 1.0) < 1e-14
    q[unit] = np.sign(q[unit])
    q.setflags(write=False)
    return q


def e3nn_wigner(l: int, rotation: np.ndarray) -> np.ndarray:
    """e3nn-jax Wigner matrix ``D_l(R)`` in float64 (``y_l(R r) = D_l y_l(r)``)."""
    import e3nn_jax as e3nn
    import jax

    rotation = np.asarray(rotation, np.float64)
    with jax.enable_x64(True):
        d = e3nn.Irrep(l, 1).D_from_matrix(rotation)
        return np.asarray(d, np.float64)


def ao_wigner(l: int, rotation: np.ndarray) -> np.ndarray:
    """Wigner matrix of one shell in PySCF's real AO basis: ``ao(R r) = D_ao ao(r)``.

    Args:
      l: angular momentum.
      rotation: proper rotation matrix ``[3, 3]``.

    Returns:
      float64 ``[2l+1, 2l+1]``.
    """
    q = pyscf_to_e3nn(l)
    return q.T @ e3nn_wigner(l, rotation) @ q


def molecule_ao_wigner(shell_ls, rotation: np.ndarray) -> np.ndarray:
    """Block-diagonal AO rotation ``D`` of a molecule (``M(R) = D M D^T``).

    Args:
      shell_ls: angular momentum of every shell of the molecule in PySCF AO order
        (concatenated over atoms).
      rotation: ``[3, 3]`` proper rotation applied to the coordinates (``r -> R r``).

    Returns:
      float64 ``[n_ao, n_ao]``.
    """
    per_l = {l: ao_wigner(l, rotation) for l in set(shell_ls)}
    n = sum(2 * l + 1 for l in shell_ls)
    d = np.zeros((n, n))
    i = 0
    for l in shell_ls:
        d[i:i + 2 * l + 1, i:i + 2 * l + 1] = per_l[l]
        i += 2 * l + 1
    return d


@functools.lru_cache(maxsize=None)
def coupling_matrix(l1: int, l2: int) -> np.ndarray:
    """Orthogonal map from an (l1, l2) block in the e3nn basis to its irreps.

    ``irreps = U @ block.reshape(-1)`` where ``irreps`` concatenates, for
    ``l3 = |l1-l2| .. l1+l2``, the ``2 l3 + 1`` components of each irrep, and
    ``block = (U.T @ irreps).reshape(2l1+1, 2l2+1)``. Under a rotation the block goes to
    ``D_l1 B D_l2^T`` and each irrep ``l3`` to ``D_l3 y``.

    Returns:
      float64 ``[(2l1+1)(2l2+1), (2l1+1)(2l2+1)]``.
    """
    import e3nn_jax as e3nn
    import jax

    rows = []
    with jax.enable_x64(True):
        for l3 in range(abs(l1 - l2), l1 + l2 + 1):
            cg = np.asarray(e3nn.clebsch_gordan(l1, l2, l3), np.float64)
            rows.append(np.sqrt(2 * l3 + 1) * cg.reshape(-1, 2 * l3 + 1).T)
    u = np.concatenate(rows, axis=0)
    err = np.abs(u @ u.T - np.eye(len(u))).max()
    if err > 1e-10:
        raise AssertionError(f"coupling_matrix({l1},{l2}) not orthogonal: {err}")
    u.setflags(write=False)
    return u


def coupling_l3(l1: int, l2: int) -> list[int]:
    """The irreps ``l3`` produced by an (l1, l2) block, in :func:`coupling_matrix` order."""
    return list(range(abs(l1 - l2), l1 + l2 + 1))
