"""Equivariant building blocks on features ``[..., (l_max+1)^2, C]`` (layout in ``so3.py``).

Every layer here commutes with the block-diagonal Wigner matrices of *any* rotation:
they act on the channel axis per degree l, or multiply whole degree-l blocks by
invariant scalars. Matrix products optionally take their inputs in a lower precision
(``matmul_dtype``, e.g. bfloat16; the backends accumulate bf16 products in float32) and
return the compute dtype. (``preferred_element_type=float32`` with bf16 inputs is not
supported by XLA:CPU, hence the cast of the result.)
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from helm_jax.nn import so3

Dtype = Any


def matmul(
    x: jax.Array,  # [..., D_in]
    kernel: jax.Array,  # [D_in, D_out]
    dtype: Dtype,
    matmul_dtype: Optional[Dtype] = None,
) -> jax.Array:
    """``x @ kernel`` with inputs cast to ``matmul_dtype`` and the result in ``dtype``."""
    assert x.shape[-1] == kernel.shape[0], (x.shape, kernel.shape)
    if matmul_dtype is None:
        return jnp.matmul(x.astype(dtype), kernel.astype(dtype))
    return jnp.matmul(x.astype(matmul_dtype), kernel.astype(matmul_dtype)).astype(dtype)


class Dense(nn.Module):
    """Dense layer with optional low-precision matmul.

    Attributes:
      features: output size.
      use_bias: add a bias.
      init_scale: variance scale of the fan-in-normal initialiser.
    """
    features: int
    use_bias: bool = True
    init_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D_in] -> [..., features]
        init = nn.initializers.variance_scaling(self.init_scale, 'fan_in', 'truncated_normal')
        kernel = self.param('kernel', init, (x.shape[-1], self.features), self.param_dtype)
        y = matmul(x, kernel, self.dtype, self.matmul_dtype)
        if self.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, (self.features,),
                               self.param_dtype).astype(self.dtype)
        return y


class RadialMLP(nn.Module):
    """MLP of invariant edge scalars: (Dense, LayerNorm, SiLU) x 2, Dense.

    Attributes:
      hidden: hidden width.
      features: output size.
    """
    hidden: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [E, D_in] -> [E, features]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, matmul_dtype=self.matmul_dtype)
        for _ in range(2):
            x = Dense(self.hidden, **kw)(x)
            x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(x)
            x = nn.silu(x)
        return Dense(self.features, **kw)(x)


def polynomial_envelope(r: jax.Array, cutoff: float, p: int = 5) -> jax.Array:
    """Smooth cutoff ``u(r/cutoff)`` with ``u(0) = 1``; u, u', u'' vanish at the cutoff.

    ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for x < 1, else 0
    (DimeNet), evaluated in the factored form ``(1-x)^3 sum_{k<p} C(k+2, 2) x^k`` that
    stays accurate (and non-negative) near x = 1.
    """
    x = jnp.clip(r / cutoff, 0.0, 1.0)
    q = sum((k + 1) * (k + 2) // 2 * x**k for k in range(p))
    return (1.0 - x) ** 3 * q


class GaussianRadialBasis(nn.Module):
    """Gaussians centred on ``linspace(0, cutoff, num)`` times a polynomial envelope.

    ``phi_k(r) = exp(-(r - mu_k)^2 / (2 sigma^2)) u(r / cutoff)`` with ``sigma`` = ``width``
    times the spacing of the centres.

    Attributes:
      num: number of Gaussians.
      cutoff: radius (same length unit as positions) where every basis function vanishes.
      width: ``sigma`` in units of the spacing ``cutoff / (num - 1)``.
    """
    num: int
    cutoff: float
    dtype: Dtype = jnp.float32
    width: float = 1.0

    def __call__(self, lengths: jax.Array) -> jax.Array:  # [E] -> [E, num]
        assert self.num >= 2, self.num
        centres = jnp.linspace(0.0, self.cutoff, self.num, dtype=self.dtype)
        sigma = self.width * self.cutoff / (self.num - 1)
        r = lengths.astype(self.dtype)[..., None]
        gauss = jnp.exp(-0.5 * ((r - centres) / sigma) ** 2)
        return gauss * polynomial_envelope(r, self.cutoff)


class ElementEmbedding(nn.Module):
    """Learned vector per element index.

    Attributes:
      num_elements: table size (species indices are ``0..num_elements-1``).
      features: embedding size.
      init_std: standard deviation of the normal initial entries.
    """
    num_elements: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 1.0

    @nn.compact
    def __call__(self, species: jax.Array) -> jax.Array:  # [N] int -> [N, features]
        table = self.param('embedding', nn.initializers.normal(self.init_std),
                           (self.num_elements, self.features), self.param_dtype)
        return jnp.take(table, species, axis=0).astype(self.dtype)


class EquivariantRMSNorm(nn.Module):
    """Equivariant RMS norm with degree balancing.

    ``x_0 <- x_0 - mean_c x_0``; ``rms^2 = mean_c sum_l w_l sum_m x_{lm,c}^2`` with
    ``w_l = 1 / ((2l+1)(l_max+1))`` so every degree counts equally; output
    ``x / sqrt(rms^2 + eps) * a_{l,c}`` plus a bias ``b_c`` on l = 0.

    Attributes:
      l_max: largest degree.
      eps: added to the mean square.
    """
    l_max: int
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., K, C] -> [..., K, C]
        size = so3.num_coefficients(self.l_max)
        assert x.shape[-2] == size, (x.shape, self.l_max)
        channels = x.shape[-1]
        x = x.astype(self.dtype)
        x0, rest = so3.split(x, [1, size - 1], axis=-2)
        x = jnp.concatenate([x0 - jnp.mean(x0, axis=-1, keepdims=True), rest], axis=-2)
        degree = so3.degree_index(self.l_max)
        balance = jnp.asarray(1.0 / ((2 * degree + 1) * (self.l_max + 1)), self.dtype)
        ms = jnp.mean(jnp.sum(balance[:, None] * x * x, axis=-2, keepdims=True),
                      axis=-1, keepdims=True)  # [..., 1, 1]
        scale = self.param('scale', nn.initializers.ones, (self.l_max + 1, channels),
                           self.param_dtype).astype(self.dtype)
        bias = self.param('bias', nn.initializers.zeros, (channels,),
                          self.param_dtype).astype(self.dtype)
        y = x * jax.lax.rsqrt(ms + self.eps) * expand_degrees(scale, self.l_max)
        return y.at[..., 0, :].add(bias)


def gate(
    x: jax.Array,  # [..., K, C]
    gates: jax.Array,  # [..., l_max * C]
) -> jax.Array:
    """SiLU on l = 0; every degree-l > 0 block scaled by ``sigmoid`` of its gate scalar.

    Args:
      x: equivariant features.
      gates: invariant gate scalars, ordered (l = 1..l_max) x channels.

    Returns:
      Gated features ``[..., K, C]``.
    """
    size, channels = x.shape[-2:]
    l_max = int(round(np.sqrt(size))) - 1
    assert size == so3.num_coefficients(l_max), x.shape
    assert gates.shape[-1] == l_max * channels, (gates.shape, x.shape)
    if l_max == 0:
        return nn.silu(x)
    g = so3.split_rows(jax.nn.sigmoid(gates.reshape(gates.shape[:-1] + (l_max, channels))),
                       axis=-2)
    xs = so3.split_degrees(x, l_max)
    return jnp.concatenate([nn.silu(xs[0])] + [xs[l] * g[l - 1] for l in range(1, l_max + 1)],
                           axis=-2)


def expand_degrees(a: jax.Array, l_max: int) -> jax.Array:
    """Per-degree values ``[..., l_max+1, C]`` -> per-coefficient ``[..., (l_max+1)^2, C]``.

    Equals ``a[..., so3.degree_index(l_max), :]`` but with broadcasts and one concatenation
    (a gather's gradient is a scatter-add, slow on XLA:CPU).
    """
    assert a.shape[-2] == l_max + 1, (a.shape, l_max)
    return jnp.concatenate([jnp.broadcast_to(al, a.shape[:-2] + (2 * l + 1,) + a.shape[-1:])
                            for l, al in enumerate(so3.split_rows(a, axis=-2))], axis=-2)


class SO3Linear(nn.Module):
    """Per-degree linear map of channels: ``y_l = x_l W_l`` (+ bias on l = 0 only).

    Attributes:
      l_max: largest degree.
      features: output channels.
      use_bias: bias on the l = 0 coefficients.
    """
    l_max: int
    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., K, C_in] -> [..., K, features]
        assert x.shape[-2] == so3.num_coefficients(self.l_max), (x.shape, self.l_max)
        init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                                in_axis=-2, out_axis=-1, batch_axis=(0,))
        kernel = self.param('kernel', init, (self.l_max + 1, x.shape[-1], self.features),
                            self.param_dtype)
        in_dtype = self.dtype if self.matmul_dtype is None else self.matmul_dtype
        x, kernel = x.astype(in_dtype), kernel.astype(in_dtype)
        # One matmul per degree on a split (not a slice: see so3.split): no gather of the
        # kernel to [K, C, D] (whose gradient is a scatter-add) and no batched dot over k.
        y = jnp.concatenate([jnp.matmul(xl, kl[0]) for xl, kl in
                             zip(so3.split_degrees(x, self.l_max), so3.split_rows(kernel, 0))],
                            axis=-2).astype(self.dtype)
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y.at[..., 0, :].add(bias.astype(self.dtype))
        return y


class FeedForward(nn.Module):
    """Per-degree linear -> gate -> per-degree linear.

    The first linear map also emits ``l_max * hidden`` gate scalars from the l = 0 input.

    Attributes:
      l_max: largest degree.
      hidden: hidden channels.
      features: output channels.
    """
    l_max: int
    hidden: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., K, C] -> [..., K, features]
        kw = dict(l_max=self.l_max, dtype=self.dtype, param_dtype=self.param_dtype,
                  matmul_dtype=self.matmul_dtype)
        scalars = so3.split_degrees(x, self.l_max)[0][..., 0, :]  # l = 0, [..., C]
        gates = Dense(self.l_max * self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                      matmul_dtype=self.matmul_dtype, name='gate_scalars')(scalars)
        h = SO3Linear(features=self.hidden, name='linear_in', **kw)(x)
        h = gate(h, gates)
        return SO3Linear(features=self.features, name='linear_out', **kw)(h)
