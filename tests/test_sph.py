"""PySCF <-> e3nn real spherical harmonics, AO Wigner matrices and coupling matrices."""

import numpy as np
import pytest

from helm_jax import sph
from equivariance_checks import assert_equivariant, random_rotation


@pytest.mark.parametrize("l", range(7))
def test_change_of_basis_is_orthogonal_and_maps_pyscf_aos(l):
    import e3nn_jax as e3nn
    import jax
    from pyscf import gto
    q = sph.pyscf_to_e3nn(l)
    np.testing.assert_allclose(q @ q.T, np.eye(2 * l + 1), atol=1e-14)
    pts = np.random.default_rng(0).normal(size=(20, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    mol = gto.M(atom="ghost-H 0 0 0", basis={"ghost-H": [[l, [1.0, 1.0]]]}, verbose=0)
    ao = mol.eval_gto("GTOval_sph", pts)
    with jax.enable_x64(True):
        y = np.asarray(e3nn.spherical_harmonics(l, e3nn.IrrepsArray("1o", pts), True,
                                                "component").array)
    scale = np.linalg.norm(ao) / np.linalg.norm(y)
    np.testing.assert_allclose(ao, scale * y @ q, atol=1e-12)


def test_change_of_basis_pinned_values():
    # p: identity (PySCF px, py, pz == e3nn x, y, z). d, f: general rotations
    # (docs/orbital_algebra.md).
    np.testing.assert_array_equal(sph.pyscf_to_e3nn(1), np.eye(3))
    q2 = sph.pyscf_to_e3nn(2)
    np.testing.assert_allclose(np.sort(np.abs(q2[q2 != 0])),
                               [0.5, 0.5, np.sqrt(3) / 2, np.sqrt(3) / 2, 1, 1, 1], atol=1e-12)
    q3 = np.abs(sph.pyscf_to_e3nn(3))
    assert np.isclose(q3, np.sqrt(5 / 8)).sum() == 4  # 0.791
    assert np.isclose(q3, np.sqrt(3 / 8)).sum() == 4  # 0.612


@pytest.mark.parametrize("l", range(5))
def test_ao_wigner_is_a_representation(l):
    r1, r2 = random_rotation(1), random_rotation(2)
    d12 = sph.ao_wigner(l, r1 @ r2)
    np.testing.assert_allclose(d12, sph.ao_wigner(l, r1) @ sph.ao_wigner(l, r2), atol=1e-12)
    np.testing.assert_allclose(sph.ao_wigner(l, r1) @ sph.ao_wigner(l, r1).T,
                               np.eye(2 * l + 1), atol=1e-12)


@pytest.mark.parametrize("l1,l2", [(0, 0), (1, 1), (1, 2), (2, 3), (3, 3)])
def test_coupling_matrix_is_orthogonal_and_equivariant(l1, l2):
    u = sph.coupling_matrix(l1, l2)
    np.testing.assert_allclose(u @ u.T, np.eye(len(u)), atol=1e-12)
    l3s = list(sph.coupling_l3(l1, l2))
    splits = np.cumsum([2 * l3 + 1 for l3 in l3s])[:-1]

    def coupled(block):  # list over l3 of the [2 l3 + 1] coefficients
        return np.split(u @ block.ravel(), splits)

    assert_equivariant(coupled, np.random.default_rng(4).normal(size=(2 * l1 + 1, 2 * l2 + 1)),
                       lambda rot, b: sph.e3nn_wigner(l1, rot) @ b @ sph.e3nn_wigner(l2, rot).T,
                       lambda rot, ys: [sph.e3nn_wigner(l3, rot) @ y for l3, y in zip(l3s, ys)],
                       rotations=[random_rotation(3)], atol=1e-12)
