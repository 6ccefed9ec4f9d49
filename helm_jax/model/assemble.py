"""Model outputs of a padded batch -> one full symmetric H per molecule (PySCF AO order).

Node outputs are de-standardised (per-element l = 0 references), reduced node irreps are
expanded, irreps become blocks, and blocks are assembled into the molecule's full matrix
with ``(H + H^T) / 2`` (both directed edges of a pair are predicted). Atom pairs beyond the
graph cutoff assemble to 0. :func:`batch_full_matrices` does the same for every graph of a
padded batch inside ``jax.jit``, with the gather index of ``batching.pad_qm``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from helm_jax import blocks
from helm_jax.data import batching
from helm_jax.data import statistics as stats_lib


def split_batch(batch) -> list[tuple[slice, slice]]:
    """``(node slice, edge slice)`` of every real molecule of one padded batch (host)."""
    n_node = np.asarray(batch.n_node)
    n_edge = np.asarray(batch.n_edge)
    real = batching.node_mask(np.asarray(batch.nodes["species"]))
    out, n0, e0 = [], 0, 0
    for g in range(len(n_node)):
        ns, es = slice(n0, n0 + n_node[g]), slice(e0, e0 + n_edge[g])
        n0, e0 = n0 + n_node[g], e0 + n_edge[g]
        if n_node[g] and real[ns].all():  # the padding graph's nodes are not real
            out.append((ns, es))
    return out


def node_irreps_to_physical(node_h: np.ndarray, species: np.ndarray, node_layout,
                            stats: stats_lib.Statistics | None) -> np.ndarray:
    """Standardised model node outputs -> physical node irreps (same layout)."""
    if stats is None:
        return node_h
    return stats_lib.destandardize_nodes(node_h, species, stats.node_mean, stats.node_std,
                                         node_layout.muls[0])


def spin_outputs(out, spin: str = "alpha") -> tuple[np.ndarray, np.ndarray]:
    """``(node_h, edge_h)`` of one spin (numpy): ``"alpha"`` (or the restricted H) or
    ``"beta"`` (``node_h_beta``, ``edge_h_beta`` of a spin-resolved model)."""
    if spin not in ("alpha", "beta"):
        raise ValueError(f"spin={spin!r}: choose 'alpha' or 'beta'.")
    suffix = "_beta" if spin == "beta" else ""
    if f"node_h{suffix}" not in out:
        raise ValueError("The model outputs no beta blocks: it is not spin-resolved "
                         "(config.heads.spin='none').")
    return np.asarray(out[f"node_h{suffix}"]), np.asarray(out[f"edge_h{suffix}"])


def batch_to_full(out: dict, batch, node_layout: blocks.IrrepsLayout,
                  edge_layout: blocks.IrrepsLayout, stats: stats_lib.Statistics | None,
                  spin: str = "alpha") -> list[np.ndarray]:
    """Full predicted H ``[n_ao, n_ao]`` of each real molecule of a single-device batch.

    ``spin="beta"`` assembles the beta blocks (``node_h_beta``, ``edge_h_beta``) of a
    spin-resolved model; ``"alpha"`` the alpha (or restricted) ones.
    """
    node_h, edge_h = spin_outputs(out, spin)
    node_h, edge_h = node_h.astype(np.float64), edge_h.astype(np.float64)
    species = np.asarray(batch.nodes["species"])
    senders, receivers = np.asarray(batch.senders), np.asarray(batch.receivers)
    template = node_layout.template
    mats = []
    for ns, es in split_batch(batch):
        z = species[ns]
        nodes = node_layout.irreps_to_blocks(
            node_irreps_to_physical(node_h[ns], z, node_layout, stats))
        edges = edge_layout.irreps_to_blocks(edge_h[es])
        mats.append(blocks.blocks_to_full(nodes, edges, z, template,
                                          senders[es] - ns.start, receivers[es] - ns.start,
                                          symmetrize=True))
    return mats


def batch_full_matrices(node_irreps, edge_irreps, ao_index, node_layout: blocks.IrrepsLayout,
                        edge_layout: blocks.IrrepsLayout):
    """Full symmetric H of every graph of a padded batch (jit-able).

    Args:
      node_irreps: ``[N, D_node]`` physical (de-standardised) node irreps.
      edge_irreps: ``[E, D_edge]`` edge irreps.
      ao_index: int ``[G, n, n]`` position of each entry in
        ``concat(node_blocks.ravel(), edge_blocks.ravel())`` (-1: zero), from
        ``batching.pad_qm``.
      node_layout, edge_layout: the irreps layouts.

    Returns:
      ``[G, n, n]``, ``(H + H^T) / 2`` per graph.
    """
    nodes = node_layout.irreps_to_blocks(node_irreps)  # [N, A, A]
    edges = edge_layout.irreps_to_blocks(edge_irreps)  # [E, A, A]
    flat = jnp.concatenate([nodes.reshape(-1), edges.reshape(-1)])
    h = jnp.where(ao_index >= 0, flat[jnp.maximum(ao_index, 0)], 0.0)
    return (h + jnp.swapaxes(h, -1, -2)) / 2
