"""Tests of helm_jax.nn: Wigner matrices, edge frames, SO(2) convolution, layers."""

import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helm_jax.nn import layers
from helm_jax.nn import so2
from helm_jax.nn import so3
from equivariance_checks import assert_equivariant, random_rotation, rotate_irreps

L_MAX = 3
C = 8


def _random_features(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _polar_rotation(phi):
    """Rotation by phi about the e3nn polar axis y."""
    return e3nn.matrix_y(jnp.asarray(phi, jnp.float32))


def test_layout_helpers():
    assert so3.num_coefficients(3) == 16
    np.testing.assert_array_equal(so3.degree_index(2), [0, 1, 1, 1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(so3.order_index(2), [0, -1, 0, 1, -2, -1, 0, 1, 2])
    assert so3.coefficient_index(2, -1) == 5


@jax.jit
def _e3nn_wigner(rotations):
    return [e3nn.Irrep(l, (-1)**l).D_from_matrix(rotations) for l in range(7)]


def test_wigner_matches_e3nn():
    wigner = jax.jit(so3.wigner_d_from_matrix, static_argnums=1)
    with jax.enable_x64(True):
        rotations = jnp.asarray(random_rotation(0, (32,)))
        expected = [np.asarray(d) for d in _e3nn_wigner(rotations)]
        blocks64 = wigner(rotations, 6)
    blocks32 = wigner(rotations.astype(jnp.float32), 6)
    for l in range(7):
        assert blocks32[l].dtype == jnp.float32 and blocks64[l].dtype == jnp.float64
        assert np.abs(np.asarray(blocks32[l]) - expected[l]).max() < 1e-6, l
        assert np.abs(np.asarray(blocks64[l]) - expected[l]).max() < 1e-12, l


def test_wigner_rotates_spherical_harmonics():
    irreps = e3nn.Irreps.spherical_harmonics(L_MAX)

    def rotate_points(rotations, p):  # one rotation per point
        return jnp.einsum('nij,nj->ni', rotations, p)

    def rotate_harmonics(rotations, y):
        d = so3.block_diagonal(so3.wigner_d_from_matrix(rotations, L_MAX))
        return jnp.einsum('nab,nb->na', d, y)

    assert_equivariant(lambda p: e3nn.spherical_harmonics(irreps, p, normalize=True).array,
                       _random_features(3, (8, 3)), rotate_points, rotate_harmonics,
                       rotations=[jnp.asarray(random_rotation(2, (8,)), jnp.float32)],
                       atol=1e-5)


def test_wigner_orthogonal_and_homomorphism():
    r1, r2 = (jnp.asarray(random_rotation(seed, (8,)), jnp.float32) for seed in (4, 5))
    d1 = so3.block_diagonal(so3.wigner_d_from_matrix(r1, L_MAX))
    d2 = so3.block_diagonal(so3.wigner_d_from_matrix(r2, L_MAX))
    d12 = so3.block_diagonal(so3.wigner_d_from_matrix(r1 @ r2, L_MAX))
    eye = jnp.eye(so3.num_coefficients(L_MAX))
    assert float(jnp.abs(jnp.einsum('nab,ncb->nac', d1, d1) - eye).max()) < 1e-6
    assert float(jnp.abs(d1 @ d2 - d12).max()) < 1e-6


def test_polar_rotation_acts_on_m_pairs():
    phi = 0.7
    blocks = so3.wigner_d_from_matrix(_polar_rotation(phi), L_MAX)
    for l, d in enumerate(blocks):
        for m in range(1, l + 1):
            p, n = l + m, l - m
            expected = [[np.cos(m * phi), -np.sin(m * phi)], [np.sin(m * phi), np.cos(m * phi)]]
            got = np.asarray(d)[np.ix_([p, n], [p, n])]
            np.testing.assert_allclose(got, expected, atol=1e-6)
        assert abs(float(d[l, l]) - 1.0) < 1e-6


EDGE_VECTORS = np.array([
    [0.3, 0.5, -0.2],
    [0.0, 1.3, 0.0],  # exactly along +y
    [0.0, -0.7, 0.0],  # exactly along -y
    [1.0, 0.0, 0.0],  # on the equator
    [-0.4, -0.1, 0.9],
    [0.0, 0.0, 0.0],  # zero-length padding edge
    [0.2, 0.2, 0.2],  # masked edge
], np.float32)
EDGE_MASK = np.array([True, True, True, True, True, False, False])


def test_edge_frames_map_edges_to_polar_axis():
    vectors, mask = jnp.asarray(EDGE_VECTORS), jnp.asarray(EDGE_MASK)
    frames, lengths = so3.edge_frames(vectors, mask)
    expected_lengths = np.where(EDGE_MASK, np.linalg.norm(EDGE_VECTORS, axis=1), 0.0)
    np.testing.assert_allclose(lengths, expected_lengths, atol=1e-6)
    mapped = jnp.einsum('eij,ej->ei', frames, vectors)
    target = expected_lengths[:, None] * np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(mapped[EDGE_MASK], target[EDGE_MASK], atol=1e-6)
    np.testing.assert_allclose(jnp.einsum('eij,ekj->eik', frames, frames),
                               np.broadcast_to(np.eye(3), frames.shape), atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.det(frames), 1.0, atol=1e-6)
    # In the frame the l=1 m=0 coefficient of the unit edge direction is 1.
    blocks, _ = so3.edge_wigner(vectors, mask, L_MAX)
    sh = e3nn.spherical_harmonics('1o', vectors[:5], normalize=True).array
    np.testing.assert_allclose(jnp.einsum('eab,eb->ea', blocks[1][:5], sh)[:, 1], np.sqrt(3.0),
                               atol=1e-5)


def test_edge_frame_gradients_finite_and_zero_on_padding():
    vectors, mask = jnp.asarray(EDGE_VECTORS), jnp.asarray(EDGE_MASK)
    weights = _random_features(6, (len(EDGE_VECTORS), so3.num_coefficients(L_MAX)))

    def f(v):
        blocks, lengths = so3.edge_wigner(v, mask, L_MAX)
        d = so3.block_diagonal(blocks)
        return jnp.sum(jnp.sin(jnp.einsum('eab,eb->ea', d, weights))) + jnp.sum(lengths**2)

    grad = np.asarray(jax.jit(jax.grad(f))(vectors))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[~EDGE_MASK], 0.0)
    assert np.abs(grad[1:3]).max() > 0.0


def test_rotate_and_polar_coefficients():
    blocks, _ = so3.edge_wigner(jnp.asarray(EDGE_VECTORS), jnp.asarray(EDGE_MASK), L_MAX)
    x = _random_features(7, (len(EDGE_VECTORS), so3.num_coefficients(L_MAX), C))
    d = so3.block_diagonal(blocks)
    np.testing.assert_allclose(so3.rotate(blocks, x), jnp.einsum('eab,ebc->eac', d, x),
                               atol=1e-6)
    np.testing.assert_allclose(so3.rotate_inverse(blocks, so3.rotate(blocks, x)), x, atol=1e-5)
    x0 = x[:, :L_MAX + 1]
    m0 = np.array([so3.coefficient_index(l, 0) for l in range(L_MAX + 1)])
    full = jnp.zeros_like(x).at[:, m0].set(x0)
    np.testing.assert_allclose(so3.polar_coefficients_to_global(blocks, x0),
                               so3.rotate_inverse(blocks, full), atol=1e-6)


@pytest.mark.parametrize('m_max', [L_MAX, 1])
def test_so2_convolution_commutes_with_polar_rotations(m_max):
    edges, c_out, num_gates = 6, 5, 7
    x = _random_features(8, (edges, so3.num_coefficients(L_MAX), C))
    scalars = _random_features(9, (edges, 4))
    conv = so2.SO2Convolution(L_MAX, m_max, c_out, num_gates=num_gates, radial_hidden=8)
    params = jax.jit(conv.init)(jax.random.PRNGKey(0), x, scalars)
    # Random biases and LayerNorm parameters, so nothing is zero by initialisation.
    params = jax.tree.map(lambda p: p + 0.1 * jnp.ones_like(p), params)
    apply = jax.jit(conv.apply)
    y, gates = apply(params, x, scalars)
    assert y.shape == (edges, so3.num_coefficients(L_MAX), c_out)
    assert gates.shape == (edges, num_gates)
    dropped = np.abs(so3.order_index(L_MAX)) > m_max
    assert np.all(np.asarray(y)[:, dropped] == 0.0)
    assert np.abs(np.asarray(y)[:, ~dropped]).min(axis=(0, 1)).max() > 0.0
    assert_equivariant(apply, (params, x, scalars),
                       lambda r, i: (i[0], rotate_irreps(r, i[1], L_MAX), i[2]),
                       lambda r, o: (rotate_irreps(r, o[0], L_MAX), o[1]),  # gates invariant
                       rotations={phi: _polar_rotation(phi) for phi in (0.3, 2.0, -1.1)},
                       atol=1e-5, outputs=(y, gates))


def test_so2_convolution_mixes_m_pairs_as_complex_product():
    x = _random_features(10, (3, so3.num_coefficients(L_MAX), C))
    conv = so2.SO2Convolution(L_MAX, L_MAX, C)
    params = jax.jit(conv.init)(jax.random.PRNGKey(1), x)
    y, _ = jax.jit(conv.apply)(params, x)
    m = 2
    kernel = params['params'][f'm{m}']['kernel']  # [(L+1-m) C, 2 (L+1-m) C]
    width = (L_MAX + 1 - m) * C
    plus = [so3.coefficient_index(l, m) for l in range(m, L_MAX + 1)]
    minus = [so3.coefficient_index(l, -m) for l in range(m, L_MAX + 1)]
    z = x[:, plus].reshape(3, -1) + 1j * x[:, minus].reshape(3, -1)
    w = kernel[:, :width] + 1j * kernel[:, width:]
    expected = z @ w
    np.testing.assert_allclose(y[:, plus].reshape(3, -1), expected.real, atol=1e-5)
    np.testing.assert_allclose(y[:, minus].reshape(3, -1), expected.imag, atol=1e-5)


def _assert_layer_equivariant(fn, x, seed):
    fn = jax.jit(fn)
    y = fn(x)
    rotate = functools.partial(rotate_irreps, l_max=L_MAX)
    assert_equivariant(fn, x, rotate, rotate, rotations=[random_rotation(seed)], atol=1e-5,
                       outputs=y)
    return y


def test_layers_are_equivariant():
    x = _random_features(11, (4, so3.num_coefficients(L_MAX), C))
    key = jax.random.PRNGKey(2)
    for module in (layers.EquivariantRMSNorm(L_MAX),
                   layers.SO3Linear(L_MAX, 6),
                   layers.FeedForward(L_MAX, 12, C)):
        params = jax.tree.map(lambda p: p + 0.1, jax.jit(module.init)(key, x))
        y = _assert_layer_equivariant(lambda v: module.apply(params, v), x, seed=12)
        assert np.all(np.isfinite(np.asarray(y)))
    gates = _random_features(13, (4, L_MAX * C))
    _assert_layer_equivariant(lambda v: layers.gate(v, gates), x, seed=13)


def test_rms_norm_values():
    x = _random_features(14, (4, so3.num_coefficients(L_MAX), C))
    norm = layers.EquivariantRMSNorm(L_MAX, eps=0.0)
    y = np.asarray(norm.apply(norm.init(jax.random.PRNGKey(0), x), x))
    np.testing.assert_allclose(y[:, 0].mean(axis=-1), 0.0, atol=1e-5)
    degree = so3.degree_index(L_MAX)
    balanced = np.mean(np.sum(y**2 / ((2 * degree[:, None] + 1) * (L_MAX + 1)), axis=1),
                       axis=-1)
    np.testing.assert_allclose(balanced, 1.0, rtol=1e-5)
    padded = layers.EquivariantRMSNorm(L_MAX)
    zero = padded.apply(padded.init(jax.random.PRNGKey(0), x), jnp.zeros_like(x))
    np.testing.assert_array_equal(zero, 0.0)


def test_gate_values():
    x = _random_features(15, (2, so3.num_coefficients(2), 3))
    gates = _random_features(16, (2, 2 * 3))
    y = np.asarray(layers.gate(x, gates))
    np.testing.assert_allclose(y[:, 0], jax.nn.silu(x[:, 0]), atol=1e-6)
    sig = jax.nn.sigmoid(gates.reshape(2, 2, 3))
    np.testing.assert_allclose(y[:, 1:4], x[:, 1:4] * sig[:, None, 0], atol=1e-6)
    np.testing.assert_allclose(y[:, 4:9], x[:, 4:9] * sig[:, None, 1], atol=1e-6)


def test_so3_linear_has_bias_only_on_l0():
    x = jnp.zeros((2, so3.num_coefficients(L_MAX), C))
    linear = layers.SO3Linear(L_MAX, 4)
    params = jax.tree.map(lambda p: p + 1.0, linear.init(jax.random.PRNGKey(0), x))
    y = np.asarray(linear.apply(params, x))
    np.testing.assert_array_equal(y[:, 0], 1.0)
    np.testing.assert_array_equal(y[:, 1:], 0.0)


def test_radial_basis_and_envelope():
    cutoff = 5.0
    r = jnp.asarray([0.0, 1.0, 2.5, 4.999, 5.0, 7.0])
    rbf = layers.GaussianRadialBasis(16, cutoff)(r)
    assert rbf.shape == (6, 16)
    assert float(rbf[0, 0]) == pytest.approx(1.0)
    assert float(jnp.abs(rbf[4:]).max()) == 0.0
    assert float(jnp.abs(rbf[3]).max()) < 1e-6
    env_grad = jax.vmap(jax.grad(lambda x: layers.polynomial_envelope(x, cutoff)))(r)
    assert float(env_grad[0]) == 0.0 and float(jnp.abs(env_grad[3:]).max()) < 1e-5



@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_radial_basis_width(width):
    """Gaussian k at one sigma = width * spacing from its centre is exp(-1/2) times the
    envelope there."""
    cutoff, num, k = 8.0, 17, 5
    sigma = width * cutoff / (num - 1)
    mu = k * cutoff / (num - 1)
    r = jnp.asarray([mu, mu + sigma])
    rbf = np.asarray(layers.GaussianRadialBasis(num, cutoff, width=width)(r))
    env = np.asarray(layers.polynomial_envelope(r, cutoff))
    np.testing.assert_allclose(rbf[:, k] / env, [1.0, np.exp(-0.5)], rtol=1e-6)

def test_matmul_dtype_bfloat16():
    x = _random_features(17, (4, so3.num_coefficients(L_MAX), C))
    exact = layers.SO3Linear(L_MAX, 6)
    low = layers.SO3Linear(L_MAX, 6, matmul_dtype=jnp.bfloat16)
    params = exact.init(jax.random.PRNGKey(3), x)
    y, y_low = exact.apply(params, x), low.apply(params, x)
    assert y_low.dtype == jnp.float32
    assert 0.0 < float(jnp.abs(y - y_low).max()) < 0.1 * float(jnp.abs(y).max())


@pytest.mark.slow
def test_layer_gradients_match_finite_differences():
    """Reverse-mode gradients (w.r.t. inputs and parameters) of every layer built on
    ``so3.split`` agree with central finite differences in float64."""
    from jax.test_util import check_grads
    with jax.enable_x64(True):
        f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        rng = np.random.default_rng(20)
        x = jnp.asarray(rng.normal(size=(3, so3.num_coefficients(L_MAX), 4)))
        scalars = jnp.asarray(rng.normal(size=(3, 5)))
        key = jax.random.PRNGKey(3)
        modules = [(layers.EquivariantRMSNorm(L_MAX, **f64), (x,)),
                   (layers.SO3Linear(L_MAX, 3, **f64), (x,)),
                   (layers.FeedForward(L_MAX, 5, 3, **f64), (x,)),
                   (so2.SO2Convolution(L_MAX, 2, 3, num_gates=4, radial_hidden=6, **f64),
                    (x, scalars))]
        for module, args in modules:
            params = jax.tree.map(lambda p: p + 0.1, module.init(key, *args))
            check_grads(lambda p, *a: module.apply(p, *a), (params, *args), order=1,
                        modes=('rev',), atol=1e-6, rtol=1e-6)
        gates = jnp.asarray(rng.normal(size=(3, L_MAX * 4)))
        check_grads(layers.gate, (x, gates), order=1, modes=('rev',), atol=1e-6, rtol=1e-6)
        check_grads(lambda a: layers.expand_degrees(a, L_MAX), (x[:, :L_MAX + 1],), order=1,
                    modes=('rev',), atol=1e-6, rtol=1e-6)
        rotations = jnp.asarray(random_rotation(4, (3,)))
        blocks = so3.wigner_d_from_matrix(rotations, L_MAX)
        for fn in (so3.rotate, so3.rotate_inverse):
            check_grads(fn, (blocks, x), order=1, modes=('rev',), atol=1e-6, rtol=1e-6)
        check_grads(so3.polar_coefficients_to_global, (blocks, x[:, :L_MAX + 1]), order=1,
                    modes=('rev',), atol=1e-6, rtol=1e-6)
