"""Losses chosen by name from the config, correct under padding and data parallelism.

A loss is a function ``loss(out, batch, ctx) -> Partial``:

* ``out``: the model outputs (``node_h``, ``edge_h``, ``energy``, ``forces``, ...);
* ``batch``: the padded ``jraph.GraphsTuple`` of one device;
* ``ctx``: :class:`LossContext` (label layouts, per-element statistics, mask tables).

It returns masked *sums* (``Partial.sums``) and a ``combine`` function applied to the sums
after they are added up over all devices, so means divide by the global number of real
entries exactly once (mace-jax style). The total loss is ``sum_name weight[name] *
combine(psum(sums))`` with weights from ``config.losses`` (``{name: weight}``).

To add a loss in a fork, write one function and name it in the config::

    # my_fork/losses.py
    def offdiag_l1(out, batch, ctx):
        err, mask = edge_error(out, batch, ctx)
        return Partial({"ae": jnp.sum(jnp.abs(err) * mask), "n": jnp.sum(mask)},
                       lambda s: s["ae"] / s["n"])

    config.losses = {"hamiltonian": 1.0, "my_fork.losses.offdiag_l1": 0.1}

Names without a dot are looked up in this module.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from helm_jax import blocks
from helm_jax.data import graphs as graphs_lib
from helm_jax.data import statistics as stats_lib


@dataclasses.dataclass(frozen=True)
class Partial:
    """Masked sums of one loss and how to turn their global totals into the loss value."""

    sums: dict[str, jax.Array]
    combine: Callable[[dict[str, jax.Array]], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossContext:
    """Static data the losses need (built once per run).

    Attributes:
      node_layout, edge_layout: irreps layouts of node and edge labels.
      slot_table: ``[119, n_slots]`` bool shell-slot table of the template.
      node_mean, node_std: ``[119, mul_0]`` per-element l = 0 node statistics.
      ao_table: ``[119, A]`` bool template-AO occupancy of each element.
    """

    node_layout: blocks.IrrepsLayout
    edge_layout: blocks.IrrepsLayout
    slot_table: np.ndarray
    node_mean: np.ndarray
    node_std: np.ndarray
    ao_table: np.ndarray

    @classmethod
    def create(cls, node_layout, edge_layout, stats: stats_lib.Statistics | None):
        """Context from layouts and statistics (identity standardisation without stats)."""
        mul0 = node_layout.muls[0]
        mean = np.zeros((119, mul0)) if stats is None else stats.node_mean
        std = np.ones((119, mul0)) if stats is None else stats.node_std
        template = node_layout.template
        ao_table = np.zeros((119, template.n_ao), bool)
        for z in template.elements:
            ao_table[z] = template.ao_mask(z)
        return cls(node_layout, edge_layout, graphs_lib.slot_mask_table(template), mean, std,
                   ao_table)


def _graph_of_nodes(batch):
    n = batch.nodes["species"].shape[0]
    return jnp.repeat(jnp.arange(batch.n_node.shape[0]), batch.n_node, total_repeat_length=n)


def node_error(out, batch, ctx: LossContext):
    """Standardised node-label error and validity mask, ``[N, D_node]`` each."""
    z = batch.nodes["species"]
    target = stats_lib.standardize_nodes(batch.nodes["h"], z, ctx.node_mean, ctx.node_std,
                                         ctx.node_layout.muls[0])
    has_h = batch.globals["h_mask"][_graph_of_nodes(batch)]
    mask = graphs_lib.label_masks(z, z, ctx.node_layout, ctx.slot_table) & has_h[:, None]
    return out["node_h"] - target, mask


def edge_error(out, batch, ctx: LossContext):
    """Edge-label error and validity mask, ``[E, D_edge]`` each (padding edges masked)."""
    z = batch.nodes["species"]
    zs, zr = z[batch.senders], z[batch.receivers]
    real = (batch.senders != batch.receivers) & (zs > 0)
    has_h = batch.globals["h_mask"][_graph_of_nodes(batch)][batch.senders]
    mask = graphs_lib.label_masks(zs, zr, ctx.edge_layout, ctx.slot_table)
    mask = mask & (real & has_h)[:, None]
    return out["edge_h"] - batch.edges["h"], mask


def hamiltonian(out, batch, ctx: LossContext) -> Partial:
    """``sqrt(MSE) + MSE`` over all valid node (standardised l = 0) and edge label entries.

    The irreps maps are orthogonal, so the MSE over irreps equals the MSE over block entries.
    """
    en, mn = node_error(out, batch, ctx)
    ee, me = edge_error(out, batch, ctx)
    se = jnp.sum(jnp.where(mn, en * en, 0.0)) + jnp.sum(jnp.where(me, ee * ee, 0.0))
    n = jnp.sum(mn) + jnp.sum(me)
    return Partial({"se": se, "n": n.astype(se.dtype)},
                   lambda s: _safe_mse(s) + jnp.sqrt(_safe_mse(s) + 1e-30))


def _safe_mse(s):
    return s["se"] / jnp.maximum(s["n"], 1.0)


def hamiltonian_mae(out, batch, ctx: LossContext) -> Partial:
    """Mean absolute error (Eh) over the valid entries of the graph's H blocks.

    Irreps are mapped back to blocks (physical units, node l = 0 references restored), so
    this is the field's H MAE restricted to atom pairs within the cutoff. Usable as a metric
    or as an L1 loss.
    """
    z = batch.nodes["species"]
    mul0 = ctx.node_layout.muls[0]
    back = lambda y: stats_lib.destandardize_nodes(y, z, ctx.node_mean, ctx.node_std, mul0)
    pred_n = ctx.node_layout.irreps_to_blocks(back(out["node_h"]))
    ref_n = ctx.node_layout.irreps_to_blocks(batch.nodes["h"])
    ao = jnp.asarray(ctx.ao_table)
    has_h_n = batch.globals["h_mask"][_graph_of_nodes(batch)]
    mask_n = (ao[z][:, :, None] & ao[z][:, None, :]) & has_h_n[:, None, None]
    ee, me = edge_error(out, batch, ctx)
    err_e = ctx.edge_layout.irreps_to_blocks(ee)
    zs, zr = z[batch.senders], z[batch.receivers]
    edge_ok = jnp.any(me, axis=-1)
    mask_e = (ao[zs][:, :, None] & ao[zr][:, None, :]) & edge_ok[:, None, None]
    ae = (jnp.sum(jnp.where(mask_n, jnp.abs(pred_n - ref_n), 0.0))
          + jnp.sum(jnp.where(mask_e, jnp.abs(err_e), 0.0)))
    n = (jnp.sum(mask_n) + jnp.sum(mask_e)).astype(ae.dtype)
    return Partial({"ae": ae, "n": n}, lambda s: s["ae"] / jnp.maximum(s["n"], 1.0))


def energy(out, batch, ctx: LossContext) -> Partial:
    """MSE of per-molecule energies (Eh, per-element reference removed) over labelled graphs."""
    del ctx
    mask = batch.globals["energy_mask"]
    err = out["energy"] - batch.globals["energy"]
    se = jnp.sum(jnp.where(mask, err * err, 0.0))
    return Partial({"se": se, "n": jnp.sum(mask).astype(se.dtype)}, _safe_mse)


def forces(out, batch, ctx: LossContext) -> Partial:
    """MSE of force components (Eh/A) over atoms with force labels."""
    del ctx
    mask = batch.nodes["forces_mask"] & (batch.nodes["species"] > 0)
    err = out["forces"] - batch.nodes["forces"]
    se = jnp.sum(jnp.where(mask[:, None], err * err, 0.0))
    return Partial({"se": se, "n": 3.0 * jnp.sum(mask).astype(se.dtype)}, _safe_mse)


def resolve(name: str) -> Callable[..., Partial]:
    """The loss function called ``name`` (this module, or a dotted ``module.function``)."""
    if "." in name:
        module, fn = name.rsplit(".", 1)
        return getattr(importlib.import_module(module), fn)
    if name.startswith("_") or not callable(globals().get(name)):
        raise ValueError(f"Unknown loss {name!r}: define it in helm_jax/losses.py or give a "
                         "dotted path 'package.module.function'.")
    return globals()[name]


def needs(weights: dict[str, float]) -> set[str]:
    """Model outputs the weighted losses read (``hamiltonian``, ``energy``, ``forces``)."""
    active = {k for k, w in weights.items() if w}
    out = set()
    if any(k not in ("energy", "forces") for k in active):
        out.add("hamiltonian")
    if "energy" in active:
        out.add("energy")
    if "forces" in active:
        out.update({"energy", "forces"})
    return out


def total_loss(partials: dict[str, Partial], weights: dict[str, float],
               reduce: Callable[[Any], Any] = lambda x: x) -> tuple[jax.Array, dict]:
    """Weighted sum of losses after ``reduce`` (e.g. ``psum`` over devices) of their sums.

    Returns:
      ``(loss, per-loss values)``.
    """
    values = {}
    total = 0.0
    for name, p in partials.items():
        values[name] = p.combine(reduce(p.sums))
        total = total + weights[name] * values[name]
    return total, values
