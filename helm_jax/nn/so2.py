"""SO(2) convolution of edge-frame features (eSCN, Passaro & Zitnick 2023).

In the edge frame (edge along the e3nn polar axis y, see ``so3.py``) a rotation by
``phi`` about the edge multiplies ``z_{l,m} = x_{l,+m} + i x_{l,-m}`` by ``exp(i m phi)``
for every l. Any map that is complex-linear within each |m| and never mixes different
|m| therefore commutes with those rotations:

    m = 0:  y_0 = W_0 x_0 + b                      (over all l and channels)
    m > 0:  y_{+m} = W_r x_{+m} - W_i x_{-m}
            y_{-m} = W_r x_{-m} + W_i x_{+m}       (over all l >= m and channels)

i.e. ``y = (W_r + i W_i) z``. Coefficients with ``|m| > m_max`` are dropped (zero output).
Optionally the inputs are first scaled by a radial MLP of the invariant edge scalars (one
factor per (m, l, channel), shared by +m and -m) and extra m = 0 outputs are returned as
invariant gate scalars.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from helm_jax.nn import layers
from helm_jax.nn import so3


def _order_indices(l_max: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``(l, +m)`` and ``(l, -m)`` for ``l = m..l_max``."""
    ls = np.arange(m, l_max + 1)
    return ls * ls + ls + m, ls * ls + ls - m


class SO2Convolution(nn.Module):
    """SO(2)-equivariant linear map of edge-frame features.

    Attributes:
      l_max: largest degree of input and output.
      m_max: largest |m| kept (``0 <= m_max <= l_max``).
      features: output channels.
      num_gates: extra invariant m = 0 outputs (gate scalars).
      radial_hidden: if set, scale the inputs by ``RadialMLP(edge_scalars)`` with this hidden
        width.
    """
    l_max: int
    m_max: int
    features: int
    num_gates: int = 0
    radial_hidden: Optional[int] = None
    dtype: layers.Dtype = jnp.float32
    param_dtype: layers.Dtype = jnp.float32
    matmul_dtype: Optional[layers.Dtype] = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [E, K, C_in] in the edge frame
        edge_scalars: Optional[jax.Array] = None,  # [E, D]
    ) -> tuple[jax.Array, jax.Array]:
        """Apply the convolution.

        Args:
          x: edge-frame features.
          edge_scalars: invariant edge scalars; required iff ``radial_hidden`` is set.

        Returns:
          ``(y, gates)``: edge-frame features ``[E, K, features]`` (zero where |m| > m_max) and
          gate scalars ``[E, num_gates]``.
        """
        l_max, m_max = self.l_max, self.m_max
        assert 0 <= m_max <= l_max, (m_max, l_max)
        assert x.ndim == 3 and x.shape[1] == so3.num_coefficients(l_max), (x.shape, l_max)
        assert (edge_scalars is not None) == (self.radial_hidden is not None)
        num_edges, _, channels = x.shape
        x = x.astype(self.dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, matmul_dtype=self.matmul_dtype)

        # Per m: inputs [E, 2, (l_max+1-m) C] holding (+m, -m); m = 0 has a single row.
        # One split into rows and concatenations, not gathers or slices: the gradient is
        # one concatenation, not a scatter-add or a full-size pad per row (see so3.split).
        x_rows = so3.split_rows(x, axis=1)
        inputs = []
        for m in range(m_max + 1):
            rows = _order_indices(l_max, m)[:1 if m == 0 else 2]
            inputs.append(jnp.stack(
                [jnp.concatenate([x_rows[int(k)] for k in r], axis=1).reshape(num_edges, -1)
                 for r in rows], axis=1))
        if self.radial_hidden is not None:
            sizes = [(l_max + 1 - m) * channels for m in range(m_max + 1)]
            radial = layers.RadialMLP(self.radial_hidden, sum(sizes), name='radial', **kw)(
                edge_scalars.astype(self.dtype))
            inputs = [xm * wm[:, None, :]
                      for xm, wm in zip(inputs, so3.split(radial, sizes, axis=-1))]

        width0 = (l_max + 1) * self.features
        y0 = layers.Dense(width0 + self.num_gates, name='m0', **kw)(inputs[0][:, 0])
        y0, gates = so3.split(y0, [width0, self.num_gates], axis=1)
        # by_order[m] = (y_{+m}, y_{-m}), each split into its rows l = m..l_max of
        # [E, 1, features].
        y0 = so3.split_rows(y0.reshape(num_edges, l_max + 1, self.features), axis=1)
        by_order = [(y0, y0)]
        for m in range(1, m_max + 1):
            width = (l_max + 1 - m) * self.features
            # One kernel [W_r | W_i] applied to both rows; 1/sqrt(2): y sums two products.
            ym = layers.Dense(2 * width, use_bias=False, init_scale=0.5, name=f'm{m}', **kw)(
                inputs[m])  # [E, 2, 2 width]
            (r0, i0), (r1, i1) = (so3.split(y, [width, width], axis=-1)
                                  for y in so3.split_rows(ym, axis=1))  # [E, 1, width]
            y_plus, y_minus = r0 - i1, r1 + i0
            by_order.append(tuple(
                so3.split_rows(y.reshape(num_edges, l_max + 1 - m, self.features), axis=1)
                for y in (y_plus, y_minus)))
        zero = jnp.zeros((num_edges, 1, self.features), self.dtype)
        rows = []  # coefficient layout k = l*l + l + m
        for l in range(l_max + 1):
            for m in range(-l, l + 1):
                if abs(m) > m_max:
                    rows.append(zero)
                else:
                    rows.append(by_order[abs(m)][0 if m >= 0 else 1][l - abs(m)])
        return jnp.concatenate(rows, axis=1), gates
