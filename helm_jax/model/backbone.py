"""HELM backbone: eSEN-style equivariant message passing with SO(2) convolutions.

Per graph (the HELM paper, arXiv 2510.00224; docs/model_and_training.md), with directed
edges ``s -> r`` (vector ``pos[r] - pos[s]``), edge frames ``D_e`` (``so3.edge_wigner``),
invariant edge scalars ``x_e = [emb_src(Z_s) | RBF(d_e) | emb_dst(Z_r)]`` and the envelope
``u(d_e)``:

    h_r^0 = emb(Z_r) [l=0] + 1/a sum_{e -> r} u_e D_e^T [MLP(x_e) on m = 0]
            (+ emb_q(q_G) + emb_s(2S_G) [l=0] with ``charge_spin_embedding``)
    per layer:
      h_r <- h_r + 1/a sum_{e -> r} u_e D_e^T SO2_b(Gate(SO2_a(D_e [N(h)_s | N(h)_r], x_e)))
      h   <- h + FFN(N(h))
      e_e <- e_e + N(D_e^T SO2_d(Gate(SO2_c(D_e [h_s | h_r], x_e))))     (compute_edges)
      e   <- e + FFN(N(e))
    outputs N(h), N(e)

with ``a = avg_degree``. Node updates never read edge embeddings, so
``compute_edges=False`` (energy-only path) skips all edge work. Padded nodes and edges
are masked to zero after every update, and padded edge vectors are replaced before any
norm (``so3.edge_frames``), so they change nothing and receive zero gradient.

Memory (``edge_chunk_size``, ``chunk_edges_above``, ``remat``): above the edge threshold
both edge passes of a layer run over fixed-size edge chunks (``flax.linen.scan`` with the
parameters broadcast, so the parameter tree is the same as unchunked): the node update
accumulates ``segment_sum`` of each chunk's messages into a carry ``[N, K, C]``, the edge
update maps each chunk of ``e`` to its new value. Each chunk body is rematerialised, so the
backward pass keeps only chunk inputs; peak activation memory is then
``O(edge_chunk_size * K * C)`` per intermediate plus the ``[E, K, C]`` edge stream itself.
The Wigner blocks of the edge frames are computed once per forward pass and sliced per
chunk (never recomputed per layer).

Charge and spin (``charge_spin_embedding``; docs/model_and_training.md, "Open shells"): the
total charge q and 2S = n_alpha - n_beta of each node's molecule select learned vectors of
two embedding tables (q in ``-MAX_CHARGE..MAX_CHARGE``, 2S in ``0..MAX_SPIN`` of
:mod:`helm_jax.data.graphs`, which refuses other values on the host), added to the l = 0
channels of the initial node features. They are rotation invariant scalars, so every
output stays equivariant, and every later feature (nodes, edges, energy) is conditioned.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from helm_jax.data import graphs as graphs_lib
from helm_jax.nn import layers
from helm_jax.nn import so2
from helm_jax.nn import so3


class _EdgeMessage(nn.Module):
    """``D^T SO2_b(Gate(SO2_a(D x, x_edge)))`` for global-frame pair features x."""
    l_max: int
    m_max: int
    channels: int
    radial_hidden: int
    dtype: layers.Dtype
    param_dtype: layers.Dtype
    matmul_dtype: Optional[layers.Dtype]

    @nn.compact
    def __call__(self, x, wigner, edge_scalars):  # [E, K, 2C] -> [E, K, C]
        kw = dict(l_max=self.l_max, m_max=self.m_max, features=self.channels, dtype=self.dtype,
                  param_dtype=self.param_dtype, matmul_dtype=self.matmul_dtype)
        x = so3.rotate(wigner, x)
        x, gates = so2.SO2Convolution(num_gates=self.l_max * self.channels,
                                      radial_hidden=self.radial_hidden, name='so2_a',
                                      **kw)(x, edge_scalars)
        x = layers.gate(x, gates)
        x, _ = so2.SO2Convolution(name='so2_b', **kw)(x)
        return so3.rotate_inverse(wigner, x)


# ``config.model`` fields that are not backbone attributes (read by ``helm_jax.train``).
NOT_BACKBONE = frozenset({'init_scale'})


def _chunk_shape(num_edges: int, chunk: int) -> tuple[int, int]:
    """``(num_chunks, chunk_size)`` for ``num_edges`` edges and at most ``chunk`` per chunk.

    Prefers the largest divisor of ``num_edges`` in ``[chunk / 2, chunk]`` (no padding, so
    the chunked views of the ``[E, K, C]`` edge stream are free reshapes instead of padded
    copies); otherwise ``chunk`` with the last chunk padded.
    """
    for size in range(chunk, (chunk + 1) // 2 - 1, -1):
        if size > 0 and num_edges % size == 0:
            return num_edges // size, size
    return -(-num_edges // chunk), chunk


def _chunk_edges(arrays, num_chunks: int, chunk: int):
    """Pads every ``[E, ...]`` array of a pytree to ``num_chunks * chunk`` rows (zeros) and
    reshapes it to ``[num_chunks, chunk, ...]``."""
    def one(x):  # [E, ...] -> [num_chunks, chunk, ...]
        pad = num_chunks * chunk - x.shape[0]
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((num_chunks, chunk) + x.shape[1:])
    return jax.tree.map(one, arrays)


class HELMLayer(nn.Module):
    """One node update and, if ``compute_edges``, one edge update (see module docstring).

    With ``edge_chunk_size > 0`` and more than ``chunk_edges_above`` edges, both edge passes
    run over chunks of ``edge_chunk_size`` edges (same parameters, same outputs).
    """
    l_max: int
    m_max: int
    channels: int
    edge_channels_hidden: int
    ffn_channels: int
    avg_degree: float
    compute_edges: bool
    dtype: layers.Dtype
    param_dtype: layers.Dtype
    matmul_dtype: Optional[layers.Dtype]
    edge_chunk_size: int = 0
    chunk_edges_above: int = 0

    def _kw(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mkw = dict(l_max=self.l_max, m_max=self.m_max, channels=self.channels,
                   radial_hidden=self.edge_channels_hidden, matmul_dtype=self.matmul_dtype, **kw)
        fkw = dict(l_max=self.l_max, hidden=self.ffn_channels, features=self.channels,
                   matmul_dtype=self.matmul_dtype, **kw)
        return kw, mkw, fkw

    def _node_messages(self, hn, wigner, edge_scalars, edge_weight, senders, receivers):
        """Sum over edges of the weighted node messages; ``[N, K, C]`` (submodules are
        created in the calling module's scope, so chunked and unchunked paths share them)."""
        _, mkw, _ = self._kw()
        pair = jnp.concatenate([hn[senders], hn[receivers]], axis=-1)  # [E, K, 2C]
        message = _EdgeMessage(name='node_message', **mkw)(pair, wigner, edge_scalars)
        message = message * edge_weight[:, None, None].astype(message.dtype)
        return jax.ops.segment_sum(message, receivers, num_segments=hn.shape[0])

    def _edge_update(self, e, h, wigner, edge_scalars, senders, receivers):
        """``e + N(message)`` then ``+ FFN(N(e))`` for the given edges; ``[E, K, C]``."""
        kw, mkw, fkw = self._kw()
        pair = jnp.concatenate([h[senders], h[receivers]], axis=-1)  # [E, K, 2C]
        message = _EdgeMessage(name='edge_message', **mkw)(pair, wigner, edge_scalars)
        e = e + layers.EquivariantRMSNorm(self.l_max, name='edge_norm_message', **kw)(message)
        return e + layers.FeedForward(name='edge_ffn', **fkw)(
            layers.EquivariantRMSNorm(self.l_max, name='edge_norm_ffn', **kw)(e))

    @nn.compact
    def __call__(
        self,
        h: jax.Array,  # [N, K, C]
        e: Optional[jax.Array],  # [E, K, C] or None
        wigner: so3.WignerBlocks,  # l: [E, 2l+1, 2l+1]
        edge_scalars: jax.Array,  # [E, D]
        edge_weight: jax.Array,  # [E] envelope, 0 on padded edges
        senders: jax.Array,  # [E]
        receivers: jax.Array,  # [E]
        node_mask: jax.Array,  # [N]
        edge_mask: jax.Array,  # [E]
        exchange=None,  # graph_parallel.HaloExchange or None
    ) -> tuple[jax.Array, Optional[jax.Array]]:
        """Updates node (and edge) features; returns ``(h [N, K, C], e [E, K, C] or None)``.

        With ``exchange`` (graph parallelism, :mod:`helm_jax.graph_parallel`) the halo rows
        of ``h`` are refreshed from their owners after the node update, before the edge
        update reads them.
        """
        num_edges = senders.shape[0]
        kw, _, fkw = self._kw()
        node_keep = node_mask[:, None, None].astype(self.dtype)
        edge_keep = edge_mask[:, None, None].astype(self.dtype)
        chunk = self.edge_chunk_size
        chunked = chunk > 0 and num_edges > max(self.chunk_edges_above, chunk)
        num_chunks, chunk = _chunk_shape(num_edges, chunk) if chunked else (1, num_edges)
        edge_inputs = (senders, receivers, wigner, edge_scalars, edge_weight)
        if chunked:  # padded rows: weight 0, features finite (zero Wigner blocks)
            edge_chunks = _chunk_edges(edge_inputs, num_chunks, chunk)

        hn = layers.EquivariantRMSNorm(self.l_max, name='node_norm_message', **kw)(h)
        if chunked:
            def node_body(mdl, acc, xs, hn):  # acc [N, K, C]; xs: one chunk of edges
                s, r, wig, sc, w = xs
                return acc + mdl._node_messages(hn, wig, sc, w, s, r), None
            scan = nn.scan(nn.remat(node_body, prevent_cse=False), variable_broadcast='params',
                           split_rngs={'params': False}, in_axes=(0, nn.broadcast))
            summed, _ = scan(self, jnp.zeros_like(h), edge_chunks, hn)
        else:
            summed = self._node_messages(hn, wigner, edge_scalars, edge_weight, senders,
                                         receivers)
        h = h + summed / self.avg_degree
        h = h + layers.FeedForward(name='node_ffn', **fkw)(
            layers.EquivariantRMSNorm(self.l_max, name='node_norm_ffn', **kw)(h))
        h = h * node_keep
        if exchange is not None:
            h = exchange(h)

        if not self.compute_edges:
            return h, None
        if chunked:
            def edge_body(mdl, carry, xs, h):  # xs: one chunk of edges and of e
                (s, r, wig, sc, _), e_chunk = xs
                return carry, mdl._edge_update(e_chunk, h, wig, sc, s, r)
            scan = nn.scan(nn.remat(edge_body, prevent_cse=False), variable_broadcast='params',
                           split_rngs={'params': False}, in_axes=(0, nn.broadcast))
            _, e = scan(self, (), (edge_chunks, _chunk_edges(e, num_chunks, chunk)), h)
            e = e.reshape((num_chunks * chunk,) + e.shape[2:])[:num_edges]
        else:
            e = self._edge_update(e, h, wigner, edge_scalars, senders, receivers)
        return h, e * edge_keep


class HELMBackbone(nn.Module):
    """Equivariant node (and directed-edge) features of molecular graphs.

    Build from a config with ``HELMBackbone.from_config(config.model)``; the attributes are
    the fields of ``config.model``, whose defaults and meanings are in
    ``helm_jax/configs/base.py`` (the one place they are set). Initialise with
    ``compute_edges=True`` so that the edge-update parameters exist (the energy-only path
    ignores them).
    """
    channels: int
    num_layers: int
    l_max: int
    m_max: int
    num_rbf: int
    cutoff: float
    num_elements: int
    edge_channels_hidden: int
    ffn_channels: int
    avg_degree: float
    dtype: layers.Dtype
    param_dtype: layers.Dtype
    matmul_dtype: Optional[layers.Dtype]
    remat: bool
    edge_chunk_size: int
    chunk_edges_above: int
    charge_spin_embedding: bool = False
    rbf_width: float = 1.0
    edge_embedding_std: float = 1e-3  # same default as configs/base.py

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> 'HELMBackbone':
        """Backbone from ``config.model``; unknown or missing fields raise a TypeError."""
        names = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
        given = set(config.keys()) - NOT_BACKBONE
        unknown, missing = given - names, names - given
        if unknown or missing:
            raise TypeError(f'model config: unknown fields {sorted(unknown)}, missing fields '
                            f'{sorted(missing)} (see helm_jax/configs/base.py)')
        return cls(**{k: v for k, v in config.to_dict().items() if k in names})

    def _charge_spin(self, num_nodes, charge, spin, dtype, param_dtype):
        """``emb_q(q) + emb_s(2S)`` per node, ``[N, C]`` (inside the compact call)."""
        zeros = jnp.zeros((num_nodes,), jnp.int32)
        charge = zeros if charge is None else charge.astype(jnp.int32)
        spin = zeros if spin is None else spin.astype(jnp.int32)
        # Values outside the tables are refused on the host (graphs.check_charge_spin);
        # the clip only keeps traced indices inside them.
        q = jnp.clip(charge, -graphs_lib.MAX_CHARGE, graphs_lib.MAX_CHARGE) + graphs_lib.MAX_CHARGE
        s = jnp.clip(spin, 0, graphs_lib.MAX_SPIN)
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        return (layers.ElementEmbedding(2 * graphs_lib.MAX_CHARGE + 1, self.channels,
                                        name='charge_embedding', **kw)(q)
                + layers.ElementEmbedding(graphs_lib.MAX_SPIN + 1, self.channels,
                                          name='spin_embedding', **kw)(s))

    @nn.compact
    def __call__(
        self,
        species: jax.Array,  # [N] int
        positions: jax.Array,  # [N, 3]
        senders: jax.Array,  # [E] int
        receivers: jax.Array,  # [E] int
        node_mask: jax.Array,  # [N] bool
        edge_mask: jax.Array,  # [E] bool
        compute_edges: bool = True,
        charge: Optional[jax.Array] = None,  # [N] int
        spin: Optional[jax.Array] = None,  # [N] int
        edge_shifts: Optional[jax.Array] = None,  # [E, 3]
        exchange=None,
    ) -> tuple[jax.Array, Optional[jax.Array]]:
        """Compute node and (if ``compute_edges``) edge features.

        Args:
          species: element index per node, ``0 <= species < num_elements``.
          positions: Cartesian positions (units of ``cutoff``).
          senders: source node of each directed edge.
          receivers: target node of each directed edge.
          node_mask: True for real nodes.
          edge_mask: True for real edges.
          compute_edges: also compute edge features (False: energy-only path).
          charge, spin: total charge and 2S of each node's molecule (None: 0); read only
            with ``charge_spin_embedding``.
          edge_shifts: Cartesian lattice shift of each edge of a periodic graph (edge
            vector ``positions[receivers] + shift - positions[senders]``; None: molecules).
          exchange: graph parallelism (:class:`helm_jax.graph_parallel.HaloExchange`): the
            nodes are one part's local rows, whose halo rows are refreshed from their
            owners after the node initialisation and after every layer's node update;
            None: the whole graph is here.

        Returns:
          ``(nodes, edges)``: node features ``[N, (l_max+1)^2, C]`` and edge features
          ``[E, (l_max+1)^2, C]`` (None if not ``compute_edges``), in the global frame and
          the e3nn layout of ``so3.py``; zero on padded rows.
        """
        num_nodes, num_edges = species.shape[0], senders.shape[0]
        assert positions.shape == (num_nodes, 3), positions.shape
        assert receivers.shape == (num_edges,), receivers.shape
        assert node_mask.shape == (num_nodes,) and edge_mask.shape == (num_edges,)
        assert 0 <= self.m_max <= self.l_max, (self.m_max, self.l_max)
        dtype = jnp.dtype(self.dtype)
        param_dtype = jnp.dtype(self.param_dtype)
        matmul_dtype = None if self.matmul_dtype is None else jnp.dtype(self.matmul_dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        size = so3.num_coefficients(self.l_max)

        positions = positions.astype(dtype)
        vectors = positions[receivers] - positions[senders]  # [E, 3]
        if edge_shifts is not None:  # periodic edges (i, j, T): r_j + T @ cell - r_i
            vectors = vectors + edge_shifts.astype(dtype)
        wigner, lengths = so3.edge_wigner(vectors, edge_mask, self.l_max)
        edge_weight = jnp.where(edge_mask, layers.polynomial_envelope(lengths, self.cutoff), 0.0)
        rbf = layers.GaussianRadialBasis(self.num_rbf, self.cutoff, dtype=dtype,
                                         width=self.rbf_width)(lengths)
        edge_scalars = jnp.concatenate([
            layers.ElementEmbedding(self.num_elements, self.edge_channels_hidden,
                                    init_std=self.edge_embedding_std,
                                    name='source_embedding', **kw)(species[senders]),
            rbf,
            layers.ElementEmbedding(self.num_elements, self.edge_channels_hidden,
                                    init_std=self.edge_embedding_std,
                                    name='target_embedding', **kw)(species[receivers]),
        ], axis=-1)  # [E, 2 edge_channels_hidden + num_rbf]

        # Node initialisation: element embedding on l = 0 plus the edge-degree embedding.
        h0 = layers.ElementEmbedding(self.num_elements, self.channels, name='node_embedding',
                                     **kw)(species)
        degree = layers.RadialMLP(self.edge_channels_hidden, (self.l_max + 1) * self.channels,
                                  matmul_dtype=matmul_dtype, name='degree_embedding',
                                  **kw)(edge_scalars)
        degree = so3.polar_coefficients_to_global(
            wigner, degree.reshape(num_edges, self.l_max + 1, self.channels))
        degree = degree * edge_weight[:, None, None]
        h = jax.ops.segment_sum(degree, receivers, num_segments=num_nodes) / self.avg_degree
        if self.charge_spin_embedding:
            h0 = h0 + self._charge_spin(num_nodes, charge, spin, **kw)
        h = h.at[:, 0, :].add(h0) * node_mask[:, None, None].astype(dtype)
        if exchange is not None:
            h = exchange(h)
        e = jnp.zeros((num_edges, size, self.channels), dtype) if compute_edges else None

        layer_cls = nn.remat(HELMLayer) if self.remat else HELMLayer
        for i in range(self.num_layers):
            h, e = layer_cls(
                l_max=self.l_max, m_max=self.m_max, channels=self.channels,
                edge_channels_hidden=self.edge_channels_hidden, ffn_channels=self.ffn_channels,
                avg_degree=self.avg_degree, compute_edges=compute_edges,
                matmul_dtype=matmul_dtype, edge_chunk_size=self.edge_chunk_size,
                chunk_edges_above=self.chunk_edges_above, name=f'layer_{i}', **kw)(
                    h, e, wigner, edge_scalars, edge_weight, senders, receivers, node_mask,
                    edge_mask, exchange)

        nodes = layers.EquivariantRMSNorm(self.l_max, name='node_norm_out', **kw)(h)
        nodes = nodes * node_mask[:, None, None].astype(dtype)
        if not compute_edges:
            return nodes, None
        edges = layers.EquivariantRMSNorm(self.l_max, name='edge_norm_out', **kw)(e)
        return nodes, edges * edge_mask[:, None, None].astype(dtype)
