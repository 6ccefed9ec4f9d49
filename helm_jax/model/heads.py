"""The Hamiltonian head: backbone features -> block irreps of the basis template.

Per node (diagonal blocks) and per directed edge (off-diagonal blocks), as in the HELM paper:
from the l = 0 features an MLP computes output scalars ``s'`` and gates ``g`` per (l, channel);
every l > 0 irrep is scaled by ``sigmoid(g)`` (the "sigmoid-gated learnable scalars" that
let the head tell apart several identical shells of a large basis); then a per-l linear map
produces the number of output irreps of that l required by the template
(:class:`helm_jax.blocks.IrrepsLayout`, from :func:`helm_jax.data.graphs.layouts_for`). The
output is the layout's flat irreps vector; the l = 0 node components are in standardised
units (see ``helm_jax.data.statistics``).

Spin-resolved Hamiltonians (``config.heads.spin``; docs/model_and_training.md, "Open
shells"): ``"alpha_beta"`` adds a second pair of irreps heads for the beta blocks;
``"sum_diff"`` adds a pair for a spin difference D next to the spin-averaged part A, with
``alpha = A + D`` and ``beta = A - D``. A closed shell (2S = 0) gets identical alpha and beta
blocks by construction: the mean of the two predictions (``alpha_beta``) or D left out
(``sum_diff``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from helm_jax.nn import layers, so3


class IrrepsHead(nn.Module):
    """Features ``[R, (l_max+1)^2, C]`` -> irreps ``[R, layout.dim]`` of one block layout.

    Attributes:
      muls: output multiplicity per l (``layout.muls``); l beyond the features' l_max must
        have multiplicity 0.
      hidden: width of the scalar MLP.
      dtype, param_dtype: compute and parameter dtypes.
      matmul_dtype: optional reduced-precision matmul inputs (e.g. bfloat16).
      scales: per-l factor on the outputs (the label unit of each degree, Eh; empty: 1).
        The head's layers work at O(1), while the entries of a Gaussian-basis H are mostly
        1e-3 to 1e-1 Eh: at O(1) output units every Adam step moves the prediction by about
        ``lr * sqrt(C)`` Eh, which sets a noise floor far above the labels' precision
        (docs/learning_efficiency.md).
    """

    muls: tuple[int, ...]
    hidden: int = 128
    scales: tuple[float, ...] = ()
    dtype: layers.Dtype = "float32"
    param_dtype: layers.Dtype = "float32"
    matmul_dtype: layers.Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Maps features to irreps.

        Args:
          x: ``[R, (l_max+1)^2, C]`` node or edge features (e3nn layout).
          mask: ``[R]`` bool, real rows.

        Returns:
          ``[R, sum_l mul_l (2l+1)]``, zero on padded rows.
        """
        rows, k, c = x.shape
        l_max = int(round(np.sqrt(k))) - 1
        assert (l_max + 1) ** 2 == k, x.shape
        top = max(l for l, m in enumerate(self.muls) if m)
        if top > l_max:
            raise ValueError(
                f"The basis template needs irreps up to l={top} but the backbone has "
                f"l_max={l_max}: set config.model.l_max >= {top} (and m_max <= l_max).")
        dtype = jnp.dtype(self.dtype)
        kw = dict(dtype=dtype, param_dtype=jnp.dtype(self.param_dtype),
                  matmul_dtype=self.matmul_dtype)
        xs = so3.split_degrees(x, l_max, axis=1)  # [R, 2l+1, C]; see so3.split
        s = xs[0][:, 0, :].astype(dtype)  # [R, C]
        hidden = nn.silu(layers.Dense(self.hidden, name="scalar_mlp_0", **kw)(s))
        out = layers.Dense(c + top * c, name="scalar_mlp_1", **kw)(hidden)
        scalars, gates = so3.split(out, [c, top * c], axis=1)
        gates = so3.split_rows(gates.reshape(rows, top, c), axis=1)  # top x [R, 1, C]
        parts = []
        for l, mul in enumerate(self.muls):
            scale = self.scales[l] if self.scales else 1.0
            if l == 0:
                y0 = layers.Dense(mul, name="linear_l0", **kw)(scalars)[:, :, None]
                parts.append(y0 * jnp.asarray(scale, dtype) if scale != 1.0 else y0)
                continue
            if mul == 0:
                parts.append(jnp.zeros((rows, 0, 2 * l + 1), dtype))
                continue
            xl = xs[l].astype(dtype) * jax.nn.sigmoid(gates[l - 1])  # [R, 2l+1, C]
            w = self.param(f"linear_l{l}", nn.initializers.lecun_normal(),
                           (c, mul), jnp.dtype(self.param_dtype))
            if scale != 1.0:  # folded into the [C, mul] weight: no extra pass over the rows
                w = w * jnp.asarray(scale, w.dtype)
            y = layers.matmul(xl, w, dtype, self.matmul_dtype)  # [R, 2l+1, mul]
            parts.append(jnp.swapaxes(y, 1, 2))  # [R, mul, 2l+1]
        flat = jnp.concatenate([p.reshape(rows, -1) for p in parts], axis=-1)
        return jnp.where(mask[:, None], flat, jnp.zeros((), flat.dtype))


SPIN_MODES = ("none", "alpha_beta", "sum_diff")


class HamiltonianHead(nn.Module):
    """Node (reduced or full layout) and edge irreps heads with separate parameters.

    Attributes:
      spin: ``"none"`` (one restricted H: submodules ``node``, ``edge``), ``"alpha_beta"``
        (``node``, ``edge`` predict alpha, ``node_beta``, ``edge_beta`` beta) or
        ``"sum_diff"`` (``node``, ``edge`` predict the spin average A, ``node_diff``,
        ``edge_diff`` the difference D; alpha = A + D, beta = A - D). See
        :data:`SPIN_MODES`.
    """

    node_muls: tuple[int, ...]
    edge_muls: tuple[int, ...]
    hidden: int = 128
    node_scales: tuple[float, ...] = ()
    edge_scales: tuple[float, ...] = ()
    diff_node_scales: tuple[float, ...] | None = None
    diff_edge_scales: tuple[float, ...] | None = None
    dtype: layers.Dtype = "float32"
    param_dtype: layers.Dtype = "float32"
    matmul_dtype: layers.Dtype | None = None
    spin: str = "none"

    @nn.compact
    def __call__(self, nodes, edges, node_mask, edge_mask, node_open=None, edge_open=None
                 ) -> dict[str, jax.Array]:
        """Maps backbone features to block irreps.

        Args:
          nodes, edges: ``[N, K, C]`` and ``[E, K, C]`` features.
          node_mask, edge_mask: ``[N]``, ``[E]`` real rows.
          node_open, edge_open: ``[N]``, ``[E]`` bool, the row's molecule is open shell
            (2S != 0); None: all closed. Read only when ``spin`` is not ``"none"``.

        Returns:
          ``{"node_h" [N, D_node], "edge_h" [E, D_edge]}`` (alpha, or the restricted H) and,
          when ``spin`` is not ``"none"``, ``"node_h_beta"``, ``"edge_h_beta"``.
        """
        if self.spin not in SPIN_MODES:
            raise ValueError(f"heads.spin={self.spin!r}: choose one of {SPIN_MODES} "
                             "(--config.heads.spin=...).")
        kw = dict(hidden=self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                  matmul_dtype=self.matmul_dtype)

        def pair(suffix, node_scales=self.node_scales, edge_scales=self.edge_scales):
            return (IrrepsHead(self.node_muls, scales=node_scales, name="node" + suffix,
                               **kw)(nodes, node_mask),
                    IrrepsHead(self.edge_muls, scales=edge_scales, name="edge" + suffix,
                               **kw)(edges, edge_mask))

        node, edge = pair("")
        if self.spin == "none":
            return {"node_h": node, "edge_h": edge}
        node_open = (jnp.zeros(node.shape[:1], bool) if node_open is None
                     else node_open)[:, None]
        edge_open = (jnp.zeros(edge.shape[:1], bool) if edge_open is None
                     else edge_open)[:, None]
        if self.spin == "alpha_beta":
            node_b, edge_b = pair("_beta")
            node_mean, edge_mean = (node + node_b) / 2, (edge + edge_b) / 2
            return {"node_h": jnp.where(node_open, node, node_mean),
                    "edge_h": jnp.where(edge_open, edge, edge_mean),
                    "node_h_beta": jnp.where(node_open, node_b, node_mean),
                    "edge_h_beta": jnp.where(edge_open, edge_b, edge_mean)}
        node_d, edge_d = pair(  # sum_diff: D in its own unit (Statistics.spin_scales)
            "_diff",
            self.node_scales if self.diff_node_scales is None else self.diff_node_scales,
            self.edge_scales if self.diff_edge_scales is None else self.diff_edge_scales)
        return {"node_h": jnp.where(node_open, node + node_d, node),
                "edge_h": jnp.where(edge_open, edge + edge_d, edge),
                "node_h_beta": jnp.where(node_open, node - node_d, node),
                "edge_h_beta": jnp.where(edge_open, edge - edge_d, edge)}

