"""Wigner-D matrices and edge frames in the e3nn-jax real spherical-harmonic basis.

Feature layout (shared by every module of ``helm_jax.nn`` and the heads): an equivariant
feature of one node or edge is an array ``[(l_max+1)^2, C]``, the transpose of the e3nn
``IrrepsArray`` of ``C x 0e + C x 1o + C x 2e + ...``. Coefficient ``(l, m)`` sits at
index ``k = l*l + l + m`` with ``m = -l..l`` in e3nn order.

e3nn-jax takes **y** as the polar axis: ``D^l`` of a rotation by ``phi`` about y maps the
pair ``(x_{+m}, x_{-m})`` of every l to

    x'_{+m} = cos(m phi) x_{+m} - sin(m phi) x_{-m}
    x'_{-m} = sin(m phi) x_{+m} + cos(m phi) x_{-m}

i.e. ``z = x_{+m} + i x_{-m}`` is multiplied by ``exp(i m phi)`` for every l at once. The
SO(2) convolution (``so2.py``) relies on this.

Wigner-D from a rotation matrix (no Euler angles, so no gimbal-lock singularities and
every entry is a polynomial in the entries of R): ``D^0 = 1``, ``D^1 = R`` (e3nn orders
l=1 as x, y, z) and, with the real Clebsch-Gordan coefficients ``C^l`` of
``(l-1) x 1 -> l`` scaled so that the ``[(2l-1) 3, 2l+1]`` matrix is an isometry,

    D^l = C^l^T (D^{l-1} (x) D^1) C^l.

``C^l`` intertwines e3nn's own representations, so this is exactly e3nn's ``D^l``; the
three contractions cost O(l^3) per edge and per l.

Edge frame: for a unit edge direction ``u`` with polar component ``y`` and
``s = sign(y)`` (``s = +1`` for ``y >= 0``), the frame is

    R(u) = F_s (I + K + K^2 / (1 + s y)),   K = [u x (s e_y)]_x,   F_s = diag(1, s, s),

the smallest rotation taking ``u`` to ``s e_y`` followed (for ``s = -1``) by the half turn
about x that takes ``-e_y`` to ``e_y``. ``1 + s y >= 1``, so R is a smooth rational function
of u on each hemisphere, including edges exactly along +-y. Across the equator the frame
jumps by a rotation about the polar axis, which SO(2)-equivariant layers cannot see.
"""

from __future__ import annotations

import functools
from typing import Sequence

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST

WignerBlocks = tuple[jax.Array, ...]  # l = 0..l_max, each [..., 2l+1, 2l+1]


def num_coefficients(l_max: int) -> int:
    """Number of spherical-harmonic coefficients ``(l_max+1)^2``."""
    return (l_max + 1) ** 2


def degree_index(l_max: int) -> np.ndarray:
    """The degree l of every coefficient index k; int array ``[(l_max+1)^2]``."""
    return np.concatenate([np.full(2 * l + 1, l) for l in range(l_max + 1)])


def order_index(l_max: int) -> np.ndarray:
    """The order m of every coefficient index k; int array ``[(l_max+1)^2]``."""
    return np.concatenate([np.arange(-l, l + 1) for l in range(l_max + 1)])


def split(x: jax.Array, sizes: Sequence[int], axis: int) -> list[jax.Array]:
    """Contiguous pieces of ``x`` along ``axis`` (``jax.lax.split``).

    Every per-degree or per-row view of a feature goes through this instead of slicing:
    the gradient of ``lax.split`` is one concatenation, whereas each slice's gradient is a
    full-size pad, summed over the slices (about a quarter of an MD17 train step on
    XLA:CPU before this was used).
    """
    return list(jax.lax.split(x, tuple(sizes), axis=axis % x.ndim))


def split_degrees(x: jax.Array, l_max: int, axis: int = -2) -> list[jax.Array]:
    """The degree blocks ``[..., 2l+1, ...]`` (l = 0..l_max) of ``x`` along ``axis``."""
    return split(x, [2 * l + 1 for l in range(l_max + 1)], axis)


def split_rows(x: jax.Array, axis: int) -> list[jax.Array]:
    """Every index of ``axis`` as its own size-1 piece."""
    return split(x, [1] * x.shape[axis], axis)


def coefficient_index(l: int, m: int) -> int:
    """Index k of coefficient (l, m) in the feature layout."""
    assert abs(m) <= l, (l, m)
    return l * l + l + m


@functools.lru_cache(maxsize=None)
def _recursion_cg(l: int) -> np.ndarray:
    """Isometric Clebsch-Gordan tensor of ``(l-1) x 1 -> l``; float64 ``[2l-1, 3, 2l+1]``."""
    assert l >= 2, l
    c = np.asarray(e3nn.clebsch_gordan(l - 1, 1, l), dtype=np.float64)
    c = c * np.sqrt(2 * l + 1)  # e3nn normalises sum(c^2) = 1; make C^T C = I
    gram = c.reshape(-1, 2 * l + 1).T @ c.reshape(-1, 2 * l + 1)
    assert np.allclose(gram, np.eye(2 * l + 1), atol=1e-12), l
    return c


def wigner_d_from_matrix(rotation: jax.Array, l_max: int) -> WignerBlocks:
    """Wigner-D blocks ``D^l(R)`` in the e3nn-jax real basis for l = 0..l_max.

    Equals ``e3nn.Irrep(l, (-1)**l).D_from_matrix(R)`` for proper rotations, and satisfies
    ``Y_l(R r) = D^l(R) Y_l(r)`` for e3nn's spherical harmonics ``Y_l``.

    Args:
      rotation: proper rotation matrices, ``[..., 3, 3]``.
      l_max: largest degree.

    Returns:
      Tuple of ``l_max + 1`` arrays; entry l has shape ``[..., 2l+1, 2l+1]``.
    """
    assert rotation.shape[-2:] == (3, 3), rotation.shape
    assert l_max >= 0, l_max
    batch = rotation.shape[:-2]
    blocks = [jnp.ones(batch + (1, 1), rotation.dtype)]
    if l_max >= 1:
        blocks.append(rotation)
    for l in range(2, l_max + 1):
        c = jnp.asarray(_recursion_cg(l), rotation.dtype)  # [2l-1, 3, 2l+1]
        a = jnp.einsum('ika,...ij->...ajk', c, blocks[-1], precision=_HIGHEST)
        b = jnp.einsum('...ajk,...km->...ajm', a, rotation, precision=_HIGHEST)
        blocks.append(jnp.einsum('...ajm,jmb->...ab', b, c, precision=_HIGHEST))
    return tuple(blocks)


def block_diagonal(blocks: Sequence[jax.Array]) -> jax.Array:
    """Dense block-diagonal matrix ``[..., (l_max+1)^2, (l_max+1)^2]`` from Wigner blocks."""
    l_max = len(blocks) - 1
    batch = blocks[0].shape[:-2]
    size = num_coefficients(l_max)
    out = jnp.zeros(batch + (size, size), blocks[0].dtype)
    for l, d in enumerate(blocks):
        assert d.shape == batch + (2 * l + 1, 2 * l + 1), (l, d.shape)
        out = out.at[..., l * l:(l + 1) ** 2, l * l:(l + 1) ** 2].set(d)
    return out


def edge_frames(
    vectors: jax.Array,  # [E, 3]
    mask: jax.Array,  # [E] bool
) -> tuple[jax.Array, jax.Array]:
    """Rotations taking each edge direction onto the e3nn polar axis +y.

    Padded edges (``mask`` False) and zero-length edges are replaced by ``e_y`` *before* any
    norm, so outputs and gradients stay finite; their frame is the identity and their
    length is 0.

    Args:
      vectors: edge vectors.
      mask: True for real edges.

    Returns:
      ``(frames, lengths)``: ``frames[e] @ vectors[e] = lengths[e] * e_y``, ``[E, 3, 3]``;
      lengths ``[E]`` (0 for padded edges).
    """
    assert vectors.ndim == 2 and vectors.shape[-1] == 3, vectors.shape
    assert mask.shape == vectors.shape[:1], (mask.shape, vectors.shape)
    valid = mask & (jnp.sum(vectors * vectors, axis=-1) > 0.0)
    e_y = jnp.asarray([0.0, 1.0, 0.0], vectors.dtype)
    safe = jnp.where(valid[:, None], vectors, e_y)  # zero-length padded edges
    length = jnp.sqrt(jnp.sum(safe * safe, axis=-1))  # [E]
    x, y, z = jnp.moveaxis(safe / length[:, None], -1, 0)
    s = jnp.where(y >= 0.0, 1.0, -1.0).astype(vectors.dtype)
    vx, vz = -s * z, s * x  # v = u x (s e_y), v_y = 0
    zero = jnp.zeros_like(x)
    k = jnp.stack([
        jnp.stack([zero, -vz, zero], axis=-1),
        jnp.stack([vz, zero, -vx], axis=-1),
        jnp.stack([zero, vx, zero], axis=-1),
    ], axis=-2)  # [E, 3, 3]
    k2 = jnp.einsum('eij,ejk->eik', k, k, precision=_HIGHEST)
    eye = jnp.eye(3, dtype=vectors.dtype)
    minimal = eye + k + k2 / (1.0 + s * y)[:, None, None]
    flip = jnp.stack([jnp.ones_like(s), s, s], axis=-1)  # diag(1, s, s)
    frames = flip[:, :, None] * minimal
    return frames, jnp.where(valid, length, 0.0)


def rotate(blocks: Sequence[jax.Array], x: jax.Array) -> jax.Array:
    """Apply block-diagonal Wigner matrices: ``y[e] = D[e] x[e]``.

    Args:
      blocks: Wigner blocks, entry l ``[E, 2l+1, 2l+1]``.
      x: features ``[E, (l_max+1)^2, C]``.

    Returns:
      Rotated features ``[E, (l_max+1)^2, C]``.
    """
    assert x.shape[1] == num_coefficients(len(blocks) - 1), (x.shape, len(blocks))
    out = [
        jnp.einsum('eab,ebc->eac', d.astype(x.dtype), xl, precision=_HIGHEST)
        for d, xl in zip(blocks, split_degrees(x, len(blocks) - 1, axis=1))
    ]
    return jnp.concatenate(out, axis=1)


def rotate_inverse(blocks: Sequence[jax.Array], x: jax.Array) -> jax.Array:
    """Apply the inverse (transpose) Wigner matrices: ``y[e] = D[e]^T x[e]``.

    Args:
      blocks: Wigner blocks, entry l ``[E, 2l+1, 2l+1]``.
      x: features ``[E, (l_max+1)^2, C]``.

    Returns:
      Rotated features ``[E, (l_max+1)^2, C]``.
    """
    assert x.shape[1] == num_coefficients(len(blocks) - 1), (x.shape, len(blocks))
    out = [
        jnp.einsum('eba,ebc->eac', d.astype(x.dtype), xl, precision=_HIGHEST)
        for d, xl in zip(blocks, split_degrees(x, len(blocks) - 1, axis=1))
    ]
    return jnp.concatenate(out, axis=1)


def polar_coefficients_to_global(blocks: Sequence[jax.Array], x0: jax.Array) -> jax.Array:
    """Rotate features that live only on the m=0 coefficients of the edge frame back.

    Equivalent to ``rotate_inverse(blocks, x)`` where ``x`` is zero except
    ``x[:, l*l + l] = x0[:, l]``, at the cost of one row of each block.

    Args:
      blocks: Wigner blocks of the edge frames, entry l ``[E, 2l+1, 2l+1]``.
      x0: m=0 coefficients per degree, ``[E, l_max+1, C]``.

    Returns:
      Global-frame features ``[E, (l_max+1)^2, C]``.
    """
    assert x0.shape[1] == len(blocks), (x0.shape, len(blocks))
    # row m = 0 of each block, as a column [E, 2l+1, 1]
    out = [jnp.swapaxes(split(d, [l, 1, l], axis=1)[1], 1, 2).astype(x0.dtype) * x0l
           for l, (d, x0l) in enumerate(zip(blocks, split_rows(x0, axis=1)))]
    return jnp.concatenate(out, axis=1)


def edge_wigner(
    vectors: jax.Array,  # [E, 3]
    mask: jax.Array,  # [E] bool
    l_max: int,
) -> tuple[WignerBlocks, jax.Array]:
    """Wigner blocks of the edge frames (computed once per batch, shared by all layers).

    Args:
      vectors: edge vectors ``pos[receiver] - pos[sender]``.
      mask: True for real edges.
      l_max: largest degree.

    Returns:
      ``(blocks, lengths)``: ``rotate(blocks, x)`` expresses global features ``x`` in the
      edge frames (edge along +y); lengths ``[E]`` (0 for padded edges).
    """
    frames, lengths = edge_frames(vectors, mask)
    return wigner_d_from_matrix(frames, l_max), lengths
