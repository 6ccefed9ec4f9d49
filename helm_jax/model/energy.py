"""Energy head ``E_G = sum_{i in G} MLP(z_i[l=0])`` and forces ``F = -dE/dR``."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from helm_jax.nn import layers


class EnergyHead(nn.Module):
    """Per-graph energy from the invariant (l = 0) node features.

    Attributes:
      hidden: hidden width of the per-node MLP (Dense, SiLU, Dense, SiLU, Dense -> 1).
    """
    hidden: int = 128
    dtype: layers.Dtype = 'float32'
    param_dtype: layers.Dtype = 'float32'

    @nn.compact
    def __call__(
        self,
        nodes: jax.Array,  # [N, K, C]
        node_mask: jax.Array,  # [N] bool
        node_graph: jax.Array,  # [N] int, graph index of each node
        num_graphs: int,
    ) -> jax.Array:  # [G]
        """Sum of per-node energies over the real nodes of each graph.

        Args:
          nodes: backbone node features (only ``nodes[:, 0]``, the l = 0 part, is read).
          node_mask: True for real nodes.
          node_graph: graph of each node (padding nodes may point at any graph).
          num_graphs: number of graphs G (static).

        Returns:
          Energies ``[G]``.
        """
        assert nodes.ndim == 3 and node_mask.shape == nodes.shape[:1], (nodes.shape,)
        assert node_graph.shape == nodes.shape[:1], (node_graph.shape, nodes.shape)
        dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        x = nodes[:, 0, :].astype(dtype)
        for _ in range(2):
            x = nn.silu(layers.Dense(self.hidden, **kw)(x))
        per_node = layers.Dense(1, **kw)(x)[:, 0]
        per_node = jnp.where(node_mask, per_node, 0.0)
        return jax.ops.segment_sum(per_node, node_graph, num_segments=num_graphs)


def with_forces(apply_fn: Callable[..., dict], positions: jax.Array,
                **inputs: Any) -> tuple[dict, jax.Array]:
    """Runs ``apply_fn(positions=positions, **inputs)`` and returns ``(outputs, forces)``.

    The one place forces are computed: ``forces = -dE/dR`` of ``outputs["energy"] [G]``.
    Graphs are independent, so the gradient of the summed energy gives every node the force
    of its own graph; every other output (e.g. the Hamiltonian blocks) comes from the same
    forward pass.

    Args:
      apply_fn: returns a dict with ``"energy" [G]`` (static arguments bound).
      positions: ``[N, 3]`` node positions.
      **inputs: the other keyword arguments of ``apply_fn``.
    """
    assert positions.ndim == 2 and positions.shape[-1] == 3, positions.shape

    def total(pos):
        out = apply_fn(positions=pos, **inputs)
        return jnp.sum(out["energy"]), out

    (_, out), grad = jax.value_and_grad(total, has_aux=True)(positions)
    return out, -grad


def energy_and_forces(
    params: Any,
    apply_fn: Callable[..., jax.Array],
    positions: jax.Array,  # [N, 3]
    **inputs: Any,
) -> tuple[jax.Array, jax.Array]:
    """Energies per graph and forces ``-dE/dR`` per node (:func:`with_forces`).

    Args:
      params: variables passed first to ``apply_fn``.
      apply_fn: ``apply_fn(params, positions=positions, **inputs) -> [G]`` energies, e.g.
        the energy-only path of ``helm_jax.model.helm.HELM`` (static arguments bound
        with functools.partial).
      positions: node positions.
      **inputs: the other keyword arguments of ``apply_fn``.

    Returns:
      ``(energies [G], forces [N, 3])``.
    """
    out, forces = with_forces(lambda **kw: {"energy": apply_fn(params, **kw)}, positions,
                              **inputs)
    return out["energy"], forces
