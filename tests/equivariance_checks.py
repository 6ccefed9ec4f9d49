"""Rotations and the equivariance assertion shared by the tests (not named equivariance:
benchmarks/equivariance.py, which test_benchmarks puts on sys.path, would shadow it).

``random_rotation(seed, shape)`` draws seeded, uniformly random proper rotations;
``assert_equivariant`` checks ``fn(rotate_inputs(R, x)) == rotate_outputs(R, fn(x))`` for
each rotation R and, on failure, names the rotation and the output and gives the largest
error against its tolerance. JAX and helm_jax are imported only by ``rotate_irreps``, so the
PySCF-only tests stay light.
"""

import numpy as np


def random_rotation(seed: int, shape=(), dtype=np.float64) -> np.ndarray:
    """Uniformly (Haar) random proper rotation matrices ``[*shape, 3, 3]``, reproducible from
    ``seed``. ``random_rotation(s, (n,))[0]`` equals ``random_rotation(s)``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(*shape, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    q = q * np.sign(np.linalg.det(q))[..., None, None]  # -q is proper when q is improper
    return q.astype(dtype)


def rotation_onto(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """A proper rotation R with R @ v/|v| = axis/|axis| (Rodrigues)."""
    a = v / np.linalg.norm(v)
    b = axis / np.linalg.norm(axis)
    c = float(a @ b)
    k = np.cross(a, b)
    s = np.linalg.norm(k)
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        u = np.cross(a, np.eye(3)[np.argmin(np.abs(a))])
        u /= np.linalg.norm(u)
        return 2 * np.outer(u, u) - np.eye(3)  # rotation by pi about u, perpendicular to a
    k = k / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * kx @ kx


def pole_rotations(seed: int, onto_y: np.ndarray, onto_z: np.ndarray | None = None) -> dict:
    """The three rotations the convention tests use: ``random`` (from ``seed``), and the ones
    putting ``onto_y`` on the e3nn pole y and ``onto_z`` (default ``onto_y``) on the PySCF
    pole z, where Wigner matrices and real spherical harmonics have their special cases."""
    onto_z = onto_y if onto_z is None else onto_z
    return {"random": random_rotation(seed),
            "bond_on_z": rotation_onto(onto_z, np.array([0.0, 0.0, 1.0])),
            "bond_on_y": rotation_onto(onto_y, np.array([0.0, 1.0, 0.0]))}


def rotate_vectors(rotation, vectors):
    """``vectors`` [..., 3] (positions, forces) rotated: ``vectors @ rotation^T``."""
    return vectors @ rotation.T


def rotate_irreps(rotation, x, l_max: int):
    """``x`` [n, (l_max+1)^2, C] in the ``helm_jax.nn.so3`` layout, rotated by the 3x3
    ``rotation`` (its block-diagonal Wigner matrix applied to axis 1)."""
    import jax.numpy as jnp
    from helm_jax.nn import so3
    d = so3.block_diagonal(so3.wigner_d_from_matrix(jnp.asarray(rotation), l_max))
    return jnp.einsum('ab,nbc->nac', d, x)


def max_abs_error(actual, expected) -> float:
    """max |actual - expected|."""
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))))


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|."""
    return max_abs_error(actual, expected) / float(np.max(np.abs(np.asarray(expected))))


def _leaves(tree, path=""):
    """(path, leaf) pairs of nested tuples, lists and dicts; anything else is a leaf."""
    if isinstance(tree, dict):
        return [x for k in tree for x in _leaves(tree[k], f"{path}[{k!r}]")]
    if isinstance(tree, (tuple, list)):
        return [x for i, t in enumerate(tree) for x in _leaves(t, f"{path}[{i}]")]
    return [(path, tree)]


def _per_leaf(option, paths, what):
    """A tolerance option for each output leaf: one value for all, or the outputs' structure."""
    if isinstance(option, (dict, tuple, list)):
        values = _leaves(option)
        if [p for p, _ in values] != paths:
            raise ValueError(f"{what} has leaves {[p for p, _ in values]}, outputs have {paths}")
        return [v for _, v in values]
    return [option] * len(paths)


def assert_equivariant(fn, inputs, rotate_inputs, rotate_outputs, *, rotations,
                       atol=0.0, rtol=0.0, relative=False, outputs=None, name=None):
    """Assert ``fn(rotate_inputs(R, inputs)) == rotate_outputs(R, fn(inputs))`` for every R.

    inputs: a tuple is unpacked into ``fn(*inputs)``, anything else is ``fn(inputs)``;
      ``rotate_inputs(R, inputs)`` returns the same structure.
    rotate_outputs(R, outputs): the expected outputs (nested tuples/lists/dicts of arrays; an
      invariant output is returned as it is).
    rotations: a sequence or a {name: rotation} dict of whatever the two callables take
      (usually 3x3 matrices, see ``random_rotation``).
    atol, rtol: ``numpy.testing.assert_allclose`` semantics per element,
      ``|got - expected| <= atol + rtol * |expected|``; a number, or one per output leaf in
      the outputs' structure.
    relative: (per leaf) atol is a fraction of the leaf's largest magnitude, the smaller of
      that of ``fn(inputs)`` and of the expected rotated output (so at least as strict as
      either): ``max |got - expected| <= atol * max |output|``.
    outputs: ``fn(inputs)`` when the caller has it already.

    Every rotation is checked before failing; the message lists each (rotation, output) that
    failed with its largest absolute and relative error. Returns ``{(rotation, output):
    max |got - expected|}``.
    """
    call = (lambda x: fn(*x)) if isinstance(inputs, tuple) else fn
    if outputs is None:
        outputs = call(inputs)
    reference = _leaves(outputs)
    paths = [p for p, _ in reference]
    atols = _per_leaf(atol, paths, "atol")
    rtols = _per_leaf(rtol, paths, "rtol")
    relatives = _per_leaf(relative, paths, "relative")
    named = rotations.items() if isinstance(rotations, dict) else enumerate(rotations)
    errors, failures = {}, []
    for key, rotation in named:
        got = _leaves(call(rotate_inputs(rotation, inputs)))
        want = _leaves(rotate_outputs(rotation, outputs))
        if [p for p, _ in got] != paths or [p for p, _ in want] != paths:
            raise AssertionError(f"rotation {key!r}: output structure {[p for p, _ in got]}, "
                                 f"expected {[p for p, _ in want]} (unrotated: {paths})")
        for (path, g), (_, w), (_, ref), a, r, rel in zip(got, want, reference, atols, rtols,
                                                          relatives):
            g, w = np.asarray(g), np.asarray(w)
            if g.shape != w.shape:
                raise AssertionError(f"rotation {key!r}, output{path}: shape {g.shape}, "
                                     f"expected {w.shape}")
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
            scale = min(float(np.max(np.abs(w), initial=0.0)),
                        float(np.max(np.abs(np.asarray(ref)), initial=0.0)))
            bound = (a * scale if rel else a) + r * np.abs(w.astype(np.float64))
            err = float(np.max(diff, initial=0.0))
            errors[(key, path)] = err
            if not np.all(diff <= bound):  # also fails on NaN
                failures.append(
                    f"  rotation {key!r}, output{path}: max |f(Rx) - R f(x)| = {err:.3e}, "
                    f"relative to max |f| = {scale:.3e}: {err / scale if scale else np.inf:.3e}; "
                    f"tolerance atol={a:g}{' x max |f|' if rel else ''}, rtol={r:g}")
    if failures:
        raise AssertionError(f"{name or getattr(fn, '__name__', 'fn')} is not equivariant:\n"
                             + "\n".join(failures))
    return errors
