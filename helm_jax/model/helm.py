"""The HELM model: backbone + Hamiltonian head + energy head, built from a ConfigDict.

Parameters live under three top-level names, which the transfer protocols rely on:
``backbone``, ``hamiltonian_head`` and ``energy_head``.

Usage::

    model = build_model(config, template)
    inputs = batch_inputs(graph)                         # one padded jraph batch
    params = model.init(rng, **inputs)["params"]
    out = model.apply({"params": params}, **inputs)      # node_h, edge_h, energy
    energy, forces = energy_and_forces(model, params, inputs)

Open shells (docs/model_and_training.md, "Open shells"): ``batch_inputs`` passes each graph's
total charge and 2S (``globals["charge"]``, ``globals["spin"]``); the backbone embeds them
with ``config.model.charge_spin_embedding``, and with ``config.heads.spin`` other than
``"none"`` the outputs add ``node_h_beta`` and ``edge_h_beta`` (``node_h``, ``edge_h`` are
then the alpha blocks).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import jax.numpy as jnp
import jraph
import ml_collections

from helm_jax import basis as basis_lib
from helm_jax import graph_parallel
from helm_jax.data import batching
from helm_jax.data import graphs as graphs_lib
from helm_jax.model import backbone as backbone_lib
from helm_jax.model import energy as energy_lib
from helm_jax.model import heads


class HELM(nn.Module):
    """Backbone with a Hamiltonian head and an energy head.

    Attributes:
      backbone: the equivariant backbone.
      node_muls: irreps multiplicities of node labels (reduced or full layout).
      edge_muls: irreps multiplicities of edge labels.
      head_hidden: width of the Hamiltonian head's scalar MLP.
      node_scales, edge_scales: per-l output units of the Hamiltonian head (Eh; empty: 1),
        from :meth:`helm_jax.data.statistics.Statistics.label_scales`.
      energy_hidden: width of the energy MLP.
      energy_scale: the energy head's output unit (Eh), e.g. the std of referenced energies.
      spin_mode: the Hamiltonian head's spin resolution (``config.heads.spin``,
        :data:`helm_jax.model.heads.SPIN_MODES`).
      diff_node_scales, diff_edge_scales: units of the ``sum_diff`` difference part
        (:meth:`helm_jax.data.statistics.Statistics.spin_scales`); None: the label units.
    """

    backbone: backbone_lib.HELMBackbone
    node_muls: tuple[int, ...]
    edge_muls: tuple[int, ...]
    head_hidden: int = 128
    node_scales: tuple[float, ...] = ()
    edge_scales: tuple[float, ...] = ()
    energy_hidden: int = 128
    energy_scale: float = 1.0
    spin_mode: str = "none"
    diff_node_scales: tuple[float, ...] | None = None
    diff_edge_scales: tuple[float, ...] | None = None

    @property
    def spin_resolved(self) -> bool:
        """Whether the outputs include beta blocks (``node_h_beta``, ``edge_h_beta``)."""
        return self.spin_mode != "none"

    @nn.compact
    def __call__(self, species, positions, senders, receivers, node_graph, num_graphs: int,
                 hamiltonian: bool = True, energy: bool = True, charge=None,
                 spin=None, edge_shifts=None, halo=None) -> dict[str, jax.Array]:
        """Runs the network.

        Args:
          species: ``[N]`` atomic numbers (0 = padding).
          positions: ``[N, 3]`` Angstrom.
          senders, receivers: ``[E]`` directed edges (padding: self-loops on padding nodes).
          node_graph: ``[N]`` graph index of each node.
          num_graphs: number of graphs G (static).
          hamiltonian: compute the edge stream and the Hamiltonian head.
          energy: compute the energy head (energy-only calls skip every edge update).
          charge, spin: int ``[G]`` total charge and 2S of each graph (None: 0), broadcast
            to the nodes with ``node_graph``.
          edge_shifts: ``[E, 3]`` Cartesian lattice shift ``T @ cell`` of each edge of a
            periodic graph (edge vector ``positions[receivers] + shift - positions[senders]``);
            None: molecules (no shift).
          halo: graph parallelism (:class:`helm_jax.graph_parallel.HaloExchange`, inside
            ``shard_map`` over its axis): the inputs are one part's local batch; positions,
            charge and spin of the halo rows come from their owners (so forces are exact),
            the backbone refreshes halo features every layer, and energies are summed over
            the parts. None: the whole batch is here.

        Returns:
          dict with ``node_h [N, D_node]``, ``edge_h [E, D_edge]`` (if ``hamiltonian``; the
          alpha blocks of a spin-resolved head, which adds ``node_h_beta``,
          ``edge_h_beta``) and ``energy [G]`` (Eh, relative to the per-element reference;
          if ``energy``).
        """
        node_mask = batching.node_mask(species)
        edge_mask = batching.edge_mask(species, senders, receivers)
        node_charge = None if charge is None else jnp.asarray(charge)[node_graph]
        node_spin = None if spin is None else jnp.asarray(spin)[node_graph]
        if halo is not None:  # halo rows sit in the padding graph: take theirs from owners
            positions = halo(positions)
            node_charge = None if node_charge is None else halo(node_charge)
            node_spin = None if node_spin is None else halo(node_spin)
        nodes, edges = self.backbone(species, positions, senders, receivers, node_mask,
                                     edge_mask, compute_edges=hamiltonian,
                                     charge=node_charge, spin=node_spin,
                                     edge_shifts=edge_shifts, exchange=halo)
        out = {}
        if hamiltonian:
            node_open = None if node_spin is None else node_spin != 0
            out.update(heads.HamiltonianHead(
                self.node_muls, self.edge_muls, hidden=self.head_hidden,
                node_scales=self.node_scales, edge_scales=self.edge_scales,
                dtype=self.backbone.dtype, param_dtype=self.backbone.param_dtype,
                matmul_dtype=self.backbone.matmul_dtype, spin=self.spin_mode,
                diff_node_scales=self.diff_node_scales, diff_edge_scales=self.diff_edge_scales,
                name="hamiltonian_head")(
                    nodes, edges, node_mask, edge_mask, node_open,
                    None if node_open is None else node_open[senders]))
        if energy:
            owned = node_mask
            if halo is not None:  # halo rows are other parts' atoms: count each on its owner
                owned = node_mask & (jnp.arange(node_mask.shape[0])
                                     < node_mask.shape[0] - halo.num_halo)
            e = energy_lib.EnergyHead(self.energy_hidden, dtype=self.backbone.dtype,
                                      param_dtype=self.backbone.param_dtype,
                                      name="energy_head")(nodes, owned, node_graph,
                                                          num_graphs)
            if halo is not None:  # every part's share of each graph's energy
                e = jax.lax.psum(e, halo.axis)
            out["energy"] = e * self.energy_scale
        return out


def build_model(config: ml_collections.ConfigDict, template: basis_lib.Template,
                stats=None) -> HELM:
    """Builds :class:`HELM` from ``config.model`` / ``config.heads`` and a basis template.

    Args:
      config: the run config; only its ``model`` (backbone fields) and ``heads``
        (``hidden``, ``energy_hidden``, ``reduced_nodes``, ``label_scale``, ``spin``)
        sections are read.
      template: the dataset's basis template (sets the output irreps).
      stats: the training statistics (:class:`helm_jax.data.statistics.Statistics`): the
        energy head's unit and the Hamiltonian head's label units
        (``config.heads.label_scale``); None: unit scales (shapes and tests only).
    """
    spin_mode = str(config.heads.get("spin", "none"))
    if spin_mode not in heads.SPIN_MODES:
        raise ValueError(f"config.heads.spin={spin_mode!r}: choose one of {heads.SPIN_MODES} "
                         "(e.g. --config.heads.spin=sum_diff).")
    node_layout, edge_layout = graphs_lib.layouts_for(template, config.heads.reduced_nodes)
    node_scales, edge_scales = ((), ()) if stats is None else stats.label_scales(
        config.heads.label_scale)
    diff_node, diff_edge = (None, None) if stats is None else stats.spin_scales(
        config.heads.label_scale)
    return HELM(backbone=backbone_lib.HELMBackbone.from_config(config.model),
                node_muls=tuple(node_layout.muls), edge_muls=tuple(edge_layout.muls),
                head_hidden=config.heads.hidden, node_scales=node_scales,
                edge_scales=edge_scales, energy_hidden=config.heads.energy_hidden,
                energy_scale=1.0 if stats is None else float(stats.energy_std),
                spin_mode=spin_mode, diff_node_scales=diff_node,
                diff_edge_scales=diff_edge)


def batch_inputs(graph: jraph.GraphsTuple) -> dict[str, Any]:
    """Model keyword inputs from one padded batch (no leading device axis): with the
    graphs' ``charge`` and ``spin`` (2S) from ``globals`` (zeros where a batch lacks them)
    and, for periodic batches, the edges' lattice shifts (``edges["shift"]``); for one part
    of a graph-parallel batch (``globals["halo_send"]``) its halo exchange."""
    num_graphs = graph.n_node.shape[0]
    glob = graph.globals if isinstance(graph.globals, dict) else {}
    edges = graph.edges if isinstance(graph.edges, dict) else {}
    zeros = jnp.zeros((num_graphs,), jnp.int32)
    return dict(species=graph.nodes["species"], positions=graph.nodes["positions"],
                senders=graph.senders, receivers=graph.receivers,
                node_graph=batching.graph_of_nodes(graph), num_graphs=num_graphs,
                charge=glob.get("charge", zeros), spin=glob.get("spin", zeros),
                edge_shifts=edges.get("shift"), halo=graph_parallel.halo_exchange_of(glob))


def energy_and_forces(model: HELM, params, inputs: dict[str, Any], **kw):
    """Energies ``[G]`` and forces ``[N, 3]`` (= -dE/dR) from the energy-only path."""
    def apply(p, positions, **rest):
        return model.apply({"params": p}, positions=positions, hamiltonian=False, **rest,
                           **kw)["energy"]
    rest = {k: v for k, v in inputs.items() if k != "positions"}
    return energy_lib.energy_and_forces(params, apply, inputs["positions"], **rest)


def scale_initial_weights(params, variance_scale: float):
    """Initial parameters with every fan-in-initialised weight matrix scaled by
    ``sqrt(variance_scale)`` (the ``kernel`` of every dense, SO(2) and per-degree linear map
    and the Hamilton head's ``linear_l*``; embeddings, norms and biases unchanged).

    The layers draw weights with variance ``1 / fan_in`` (times a per-layer factor);
    ``variance_scale = 1/3`` gives the variance of PyTorch's default ``nn.Linear``
    initialisation, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, which the HELM reference uses.
    With Adam, whose steps have a fixed size per weight, smaller initial weights mean larger
    relative updates early in training (docs/learning_efficiency.md).
    """
    if variance_scale == 1.0:
        return params
    factor = float(np.sqrt(variance_scale))

    def scale(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        return x * np.asarray(factor, x.dtype) if (
            name == "kernel" or name.startswith("linear_l")) else x
    return jax.tree_util.tree_map_with_path(scale, params)


def count_params(params) -> int:
    """Number of scalar parameters."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
