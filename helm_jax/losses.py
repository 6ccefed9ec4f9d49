"""Losses chosen by name from the config, correct under padding and data parallelism.

A loss is a function ``loss(out, batch, ctx) -> LossSums`` registered under a name with the
model outputs it reads (:func:`register`):

* ``out``: the model outputs (``node_h``, ``edge_h``, ``energy``, ``forces``, ``qm``; a
  spin-resolved model adds ``node_h_beta``, ``edge_h_beta``, which :func:`node_error`,
  :func:`edge_error` and the Hamiltonian losses include);
* ``batch``: the padded ``jraph.GraphsTuple`` of one device;
* ``ctx``: :class:`LossContext` (label layouts, per-element statistics, mask tables).

It returns masked *sums* (``LossSums.sums``) and a ``combine`` function applied to the sums
after they are added up over all devices, so means divide by the global number of real
entries exactly once (mace-jax style). The total loss is ``sum_name weight[name] *
combine(psum(sums))`` with weights from ``config.losses`` (``{name: weight}``); the forward
pass computes the union of the outputs the weighted losses declare (:func:`needs`).

To add a loss in a fork, register one function and name it in the config::

    # my_fork/losses.py
    from helm_jax import losses

    @losses.register("offdiag_l1", needs=("hamiltonian",))
    def offdiag_l1(out, batch, ctx):
        err, mask = losses.edge_error(out, batch, ctx)
        return losses.LossSums({"ae": jnp.sum(jnp.abs(err) * mask), "n": jnp.sum(mask)},
                               lambda s: s["ae"] / s["n"])

    config.loss_modules = ("my_fork.losses",)   # imported before the names are resolved
    config.losses.offdiag_l1 = 0.1

Outputs a loss may declare: ``hamiltonian`` (``node_h``, ``edge_h``), ``energy``,
``forces`` (``-dE/dR``, implies ``energy``), ``qm`` (orbital energies, dipole of the
predicted H, :func:`qm_outputs`; implies ``hamiltonian``), ``polarizability`` (implies
``qm``) and ``bands`` (band energies of periodic graphs at their k-points,
:func:`helm_jax.band_losses.band_outputs`; implies ``hamiltonian``).

Quantum-chemistry losses (``orbital_energies``, ``gap``, ``dipole``, ``polarizability``; the
second seed paper's indirect targets) read ``out["qm"]`` from batches with
``globals["qm"]`` (``config.qm.enabled``). Their weights mix with the others, e.g.
``config.losses = {"hamiltonian": 1.0, "orbital_energies": 1e-2, "dipole": 1e-3}``. For a
model with beta outputs they are unrestricted (docs/qm_targets.md, "Open shells"): each
spin's H gives its orbitals (``n_alpha`` / ``n_beta`` occupied), the orbital-energy losses
cover both spins' target rows, the gap is the open-shell one (either spin), and the dipole
and polarisability are those of the total density; a closed shell gives the restricted
values.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from helm_jax import blocks
from helm_jax import orbitals as orbitals_lib
from helm_jax.data import batching
from helm_jax.data import graphs as graphs_lib
from helm_jax.data import statistics as stats_lib
from helm_jax.model import assemble
from helm_jax.model import energy as energy_lib
from helm_jax.model import helm as helm_lib

# Losses on physical functions of H, and their MAE metrics (names in the registry).
QM_LOSSES = ("orbital_energies", "gap", "dipole", "polarizability")
QM_METRICS = ("orbital_energy_mae", "gap_mae", "dipole_mae", "polarizability_mae")


# Losses and metrics on the band structure of periodic graphs (helm_jax/band_losses.py).
BAND_LOSSES = ("band_energy", "band_gap")
BAND_METRICS = ("band_energy_mae", "band_gap_mae")

OUTPUTS = ("hamiltonian", "energy", "forces", "qm", "polarizability", "bands")
_IMPLIES = {"forces": {"energy"}, "qm": {"hamiltonian"}, "polarizability": {"qm", "hamiltonian"},
            "bands": {"hamiltonian"}}
# Modules whose losses are registered on first lookup (they import this module).
_BUILTIN_MODULES = ("helm_jax.band_losses",)


@dataclasses.dataclass(frozen=True)
class LossSums:
    """Masked sums of one loss and how to turn their global totals into the loss value."""

    sums: dict[str, jax.Array]
    combine: Callable[[dict[str, jax.Array]], jax.Array]


@dataclasses.dataclass(frozen=True)
class RegisteredLoss:
    """A loss function and the model outputs it reads."""

    fn: Callable[..., LossSums]
    needs: frozenset[str]


_REGISTRY: dict[str, RegisteredLoss] = {}


def register(name: str | None = None, *, needs: tuple[str, ...]):
    """Decorator: registers a loss (or metric) under ``name`` (default: the function's name).

    Args:
      name: the name configs use in ``config.losses``.
      needs: the model outputs it reads, from :data:`OUTPUTS`.

    Raises:
      ValueError: an unknown output, or a name registered by another function.
    """
    unknown = set(needs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"register: unknown outputs {sorted(unknown)}; choose from {OUTPUTS}")

    def wrap(fn):
        key = name or fn.__name__
        old = _REGISTRY.get(key)
        if old is not None and old.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"A loss named {key!r} is already registered ({old.fn.__module__}"
                             f".{old.fn.__qualname__}); choose another name.")
        full = set(needs)
        for n in needs:
            full |= _IMPLIES.get(n, set())
        _REGISTRY[key] = RegisteredLoss(fn, frozenset(full))
        return fn
    return wrap


def registered() -> list[str]:
    """Names of every registered loss and metric."""
    return sorted(_REGISTRY)


@dataclasses.dataclass(frozen=True)
class LossContext:
    """Static data the losses need (built once per run).

    Attributes:
      node_layout, edge_layout: irreps layouts of node and edge labels.
      slot_table: ``[119, n_slots]`` bool shell-slot table of the template.
      node_mean, node_std: ``[119, mul_0]`` per-element l = 0 node statistics.
      ao_table: ``[119, A]`` bool template-AO occupancy of each element.
      n_virtual: virtual orbitals (after the occupied ones) in the orbital-energy losses.
      s_threshold: overlap eigenvalue guard of :func:`helm_jax.orbitals.solve`.
    """

    node_layout: blocks.IrrepsLayout
    edge_layout: blocks.IrrepsLayout
    slot_table: np.ndarray
    node_mean: np.ndarray
    node_std: np.ndarray
    ao_table: np.ndarray
    n_virtual: int = 0
    s_threshold: float = orbitals_lib.S_THRESHOLD

    @classmethod
    def create(cls, node_layout, edge_layout, stats: stats_lib.Statistics | None,
               n_virtual: int = 0, s_threshold: float = orbitals_lib.S_THRESHOLD):
        """Context from layouts and statistics (identity standardisation without stats)."""
        mul0 = node_layout.muls[0]
        mean = np.zeros((119, mul0)) if stats is None else stats.node_mean
        std = np.ones((119, mul0)) if stats is None else stats.node_std
        template = node_layout.template
        ao_table = np.zeros((119, template.n_ao), bool)
        for z in template.elements:
            ao_table[z] = template.ao_mask(z)
        return cls(node_layout, edge_layout, graphs_lib.slot_mask_table(template), mean, std,
                   ao_table, int(n_virtual), float(s_threshold))


SPINS = ("alpha", "beta")
#: Per-spin H MAE metrics (:func:`hamiltonian_mae_alpha`, :func:`hamiltonian_mae_beta`) for
#: spin-resolved models; an evaluator adds them like :data:`QM_METRICS`.
SPIN_METRICS = ("hamiltonian_mae_alpha", "hamiltonian_mae_beta")


def spins(out, spin: str | None = None) -> tuple[str, ...]:
    """The spins a loss sums over: ``spin`` if given, else ``("alpha", "beta")`` when the
    model outputs beta blocks (``node_h_beta``) and ``("alpha",)`` otherwise."""
    if spin is not None:
        if spin not in SPINS:
            raise ValueError(f"spin={spin!r}: choose one of {SPINS} (or None: both).")
        return (spin,)
    return SPINS if "node_h_beta" in out else ("alpha",)


def _h_pair(out, batch, spin: str, where: str):
    """``(prediction, label)`` keys of one spin: ``node_h``/``h`` or ``*_beta``/``h_beta``.

    A model without beta outputs predicts the restricted H, so its beta prediction is its
    alpha one; a batch without beta labels (restricted data) has beta = alpha.
    """
    if spin == "alpha":
        return out[f"{where}_h"], getattr(batch, f"{where}s")["h"]
    labels = getattr(batch, f"{where}s")
    if "node_h_beta" in out and "h_beta" not in labels:
        raise ValueError("The model predicts beta blocks but the batch has no beta labels "
                         "(h_beta): build the data with GraphSpec(spin_resolved=True) "
                         "(set by --config.heads.spin=sum_diff or alpha_beta).")
    return (out.get(f"{where}_h_beta", out[f"{where}_h"]),
            labels.get("h_beta", labels["h"]))


def node_error(out, batch, ctx: LossContext, spin: str | None = None):
    """Standardised node-label error and validity mask, ``[N, D_node]`` each.

    For a model with beta outputs (and ``spin`` None) the alpha and beta errors are
    concatenated along the rows, ``[2N, D_node]``; ``spin="alpha"`` or ``"beta"`` selects one.
    """
    z = batch.nodes["species"]
    has_h = batch.globals["h_mask"][batching.graph_of_nodes(batch)]
    mask = graphs_lib.label_masks(z, z, ctx.node_layout, ctx.slot_table) & has_h[:, None]
    errs = []
    for s in spins(out, spin):
        pred, label = _h_pair(out, batch, s, "node")
        target = stats_lib.standardize_nodes(label, z, ctx.node_mean, ctx.node_std,
                                             ctx.node_layout.muls[0])
        errs.append(pred - target)
    if len(errs) == 1:
        return errs[0], mask
    return jnp.concatenate(errs), jnp.concatenate([mask] * len(errs))


def edge_error(out, batch, ctx: LossContext, spin: str | None = None):
    """Edge-label error and validity mask, ``[E, D_edge]`` each (padding edges and, in
    periodic batches, edges without a label masked).

    For a model with beta outputs (and ``spin`` None) the alpha and beta errors are
    concatenated along the rows, ``[2E, D_edge]``; ``spin="alpha"`` or ``"beta"`` selects one.
    """
    z = batch.nodes["species"]
    zs, zr = z[batch.senders], z[batch.receivers]
    real = batching.edge_mask(z, batch.senders, batch.receivers)
    # The receiver's graph (a sender may be a halo row of a graph-parallel part, which
    # belongs to the padding graph; for every real edge both are the same graph).
    has_h = batch.globals["h_mask"][batching.graph_of_nodes(batch)][batch.receivers]
    if "h_label_mask" in batch.edges:  # periodic: edges (i, j, T) the labels do not store
        has_h = has_h & batch.edges["h_label_mask"]
    mask = graphs_lib.label_masks(zs, zr, ctx.edge_layout, ctx.slot_table)
    mask = mask & (real & has_h)[:, None]
    errs = [pred - label for pred, label in
            (_h_pair(out, batch, s, "edge") for s in spins(out, spin))]
    if len(errs) == 1:
        return errs[0], mask
    return jnp.concatenate(errs), jnp.concatenate([mask] * len(errs))


@register(needs=("hamiltonian",))
def hamiltonian(out, batch, ctx: LossContext) -> LossSums:
    """``sqrt(MSE) + MSE`` over all valid node (standardised l = 0) and edge label entries.

    The irreps maps are orthogonal, so the MSE over irreps equals the MSE over block entries.
    A spin-resolved model's alpha and beta entries count alike (one mean over both spins).
    """
    en, mn = node_error(out, batch, ctx)
    ee, me = edge_error(out, batch, ctx)
    se = jnp.sum(jnp.where(mn, en * en, 0.0)) + jnp.sum(jnp.where(me, ee * ee, 0.0))
    n = jnp.sum(mn) + jnp.sum(me)
    return LossSums({"se": se, "n": n.astype(se.dtype)}, rmse_plus_mse)


def _safe_mse(s):
    return s["se"] / jnp.maximum(s["n"], 1.0)


def rmse_plus_mse(s):
    """``MSE + sqrt(MSE)`` of summed squared errors ``{"se", "n"}``: the combine of the
    ``hamiltonian`` loss and the band losses."""
    return _safe_mse(s) + jnp.sqrt(_safe_mse(s) + 1e-30)


def _h_abs_sums(out, batch, ctx: LossContext, spin: str):
    """``(sum |error|, count)`` over the valid block entries of one spin (Eh)."""
    z = batch.nodes["species"]
    mul0 = ctx.node_layout.muls[0]
    back = lambda y: stats_lib.destandardize_nodes(y, z, ctx.node_mean, ctx.node_std, mul0)
    pred, label = _h_pair(out, batch, spin, "node")
    pred_n = ctx.node_layout.irreps_to_blocks(back(pred))
    ref_n = ctx.node_layout.irreps_to_blocks(label)
    ao = jnp.asarray(ctx.ao_table)
    has_h_n = batch.globals["h_mask"][batching.graph_of_nodes(batch)]
    mask_n = (ao[z][:, :, None] & ao[z][:, None, :]) & has_h_n[:, None, None]
    ee, me = edge_error(out, batch, ctx, spin)
    err_e = ctx.edge_layout.irreps_to_blocks(ee)
    zs, zr = z[batch.senders], z[batch.receivers]
    edge_ok = jnp.any(me, axis=-1)
    mask_e = (ao[zs][:, :, None] & ao[zr][:, None, :]) & edge_ok[:, None, None]
    ae = (jnp.sum(jnp.where(mask_n, jnp.abs(pred_n - ref_n), 0.0))
          + jnp.sum(jnp.where(mask_e, jnp.abs(err_e), 0.0)))
    n = (jnp.sum(mask_n) + jnp.sum(mask_e)).astype(ae.dtype)
    return ae, n


def _mae_sums(out, batch, ctx: LossContext, spin: str | None) -> LossSums:
    parts = [_h_abs_sums(out, batch, ctx, s) for s in spins(out, spin)]
    ae, n = parts[0]
    for a, k in parts[1:]:
        ae, n = ae + a, n + k
    return LossSums({"ae": ae, "n": n}, lambda s: s["ae"] / jnp.maximum(s["n"], 1.0))


@register(needs=("hamiltonian",))
def hamiltonian_mae(out, batch, ctx: LossContext) -> LossSums:
    """Mean absolute error (Eh) over the valid entries of the graph's H blocks.

    Irreps are mapped back to blocks (physical units, node l = 0 references restored), so
    this is the field's H MAE restricted to atom pairs within the cutoff. Usable as a metric
    or as an L1 loss. A spin-resolved model's alpha and beta blocks count alike.
    """
    return _mae_sums(out, batch, ctx, None)


@register(needs=("hamiltonian",))
def hamiltonian_mae_alpha(out, batch, ctx: LossContext) -> LossSums:
    """:func:`hamiltonian_mae` of the alpha blocks only (the restricted H of a model
    without beta outputs)."""
    return _mae_sums(out, batch, ctx, "alpha")


@register(needs=("hamiltonian",))
def hamiltonian_mae_beta(out, batch, ctx: LossContext) -> LossSums:
    """:func:`hamiltonian_mae` of the beta blocks only (beta = alpha for a model without beta
    outputs and for restricted labels)."""
    return _mae_sums(out, batch, ctx, "beta")


@register(needs=("energy",))
def energy(out, batch, ctx: LossContext) -> LossSums:
    """MSE of per-molecule energies (Eh, per-element reference removed) over labelled graphs."""
    del ctx
    mask = batch.globals["energy_mask"]
    err = out["energy"] - batch.globals["energy"]
    se = jnp.sum(jnp.where(mask, err * err, 0.0))
    return LossSums({"se": se, "n": jnp.sum(mask).astype(se.dtype)}, _safe_mse)


@register(needs=("forces",))
def forces(out, batch, ctx: LossContext) -> LossSums:
    """MSE of force components (Eh/A) over atoms with force labels."""
    del ctx
    mask = batch.nodes["forces_mask"] & batching.node_mask(batch.nodes["species"])
    err = out["forces"] - batch.nodes["forces"]
    se = jnp.sum(jnp.where(mask[:, None], err * err, 0.0))
    return LossSums({"se": se, "n": 3.0 * jnp.sum(mask).astype(se.dtype)}, _safe_mse)


def qm_outputs(out, batch, ctx: LossContext, with_polarizability: bool) -> dict[str, jax.Array]:
    """Orbital energies, dipole and polarisability of every graph's predicted full H.

    A model without beta outputs predicts one restricted H per molecule (the batch holds
    closed shells: ``graphs.qm_labels`` refuses open shells without a spin-resolved spec),
    solved with ``n_alpha = n_beta`` doubly occupied orbitals
    (:func:`helm_jax.orbitals.properties`). A model with beta outputs (``node_h_beta``)
    gives each molecule an alpha and a beta H, solved per spin with ``n_alpha`` and
    ``n_beta`` occupied orbitals; dipole and polarisability are those of the total density
    (:func:`helm_jax.orbitals.properties_spins`).

    Args:
      out: model outputs (``node_h``, ``edge_h``; ``node_h_beta``, ``edge_h_beta``).
      batch: padded batch with ``globals["qm"]`` (``batching.pad_qm``).
      ctx: the loss context.
      with_polarizability: also the polarisability (three forward-mode derivatives).

    Returns:
      ``{"mo_energy" [G, n], "n_orbitals" [G], "dipole" [G, 3]}`` and
      ``"polarizability" [G, 3, 3]`` if asked; with beta outputs ``mo_energy`` is
      ``[G, 2, n]`` (alpha row, beta row).
    """
    q = batch.globals["qm"]
    z = batch.nodes["species"]

    def full(node_key, edge_key):
        node = stats_lib.destandardize_nodes(out[node_key], z, ctx.node_mean, ctx.node_std,
                                             ctx.node_layout.muls[0])
        return assemble.batch_full_matrices(node, out[edge_key], q["ao_index"],
                                            ctx.node_layout, ctx.edge_layout)

    h = full("node_h", "edge_h")
    if "node_h_beta" in out:
        h = jnp.stack([h, full("node_h_beta", "edge_h_beta")], axis=1)  # [G, 2, n, n]
        n_occ = jnp.stack([q["n_alpha"], q["n_beta"]], axis=1)  # [G, 2]
        properties = orbitals_lib.properties_spins
    else:
        n_occ, properties = q["n_alpha"], orbitals_lib.properties
    fn = functools.partial(properties, with_polarizability=with_polarizability,
                           s_threshold=ctx.s_threshold)
    res = jax.vmap(fn)(h, q["overlap"], q["ao_dipole"], q["ao_mask"], n_occ,
                       q["nuclear_dipole"])
    del res["density"]
    return res


def model_outputs(model, params, batch, need: set[str],
                  ctx: LossContext | None = None) -> dict[str, jax.Array]:
    """The model outputs that the losses in ``need`` (:func:`needs`) read, for one batch.

    Forces (``-dE/dR``, :func:`helm_jax.model.energy.with_forces`) come from the same forward
    pass as the other outputs; ``out["qm"]`` (:func:`qm_outputs`) from the predicted H.
    """
    if "bands" in need:  # band energies of periodic graphs, solved once for every loss
        from helm_jax import band_losses  # pylint: disable=import-outside-toplevel
        out = model_outputs(model, params, batch, need - {"bands"}, ctx)
        return {**out, "bands": band_losses.band_outputs(out, batch, ctx)}
    if "qm" in need:
        out = model_outputs(model, params, batch, need - {"qm"}, ctx)
        return {**out, "qm": qm_outputs(out, batch, ctx, "polarizability" in need)}
    inputs = helm_lib.batch_inputs(batch)
    flags = dict(hamiltonian="hamiltonian" in need, energy="energy" in need)
    if "forces" not in need:
        return model.apply({"params": params}, **inputs, **flags)
    positions = inputs.pop("positions")
    out, forces = energy_lib.with_forces(
        lambda **kw: model.apply({"params": params}, **kw, **{**flags, "energy": True}),
        positions, **inputs)
    return {**out, "forces": forces}


def _masked_sum(x, mask):
    mask = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    mask = jnp.broadcast_to(mask, x.shape)
    return jnp.sum(jnp.where(mask, x, 0.0)), jnp.sum(mask).astype(x.dtype)


def _mse(err, mask) -> LossSums:
    se, n = _masked_sum(err * err, mask)
    return LossSums({"se": se, "n": n}, _safe_mse)


def _mae(abs_err, mask) -> LossSums:
    ae, n = _masked_sum(abs_err, mask)
    return LossSums({"ae": ae, "n": n}, lambda s: s["ae"] / jnp.maximum(s["n"], 1.0))


def _spin_resolved(pred) -> bool:
    """Whether :func:`qm_outputs` solved per spin (``mo_energy [G, 2, n]``)."""
    return pred["mo_energy"].ndim == 3


def _occupations_and_targets(q, pred):
    """``(n_occ, target mo_energy)``: ``[G]``, ``[G, n]`` restricted, or ``[G, 2]``,
    ``[G, 2, n]`` (alpha, beta) for per-spin outputs."""
    if _spin_resolved(pred):
        return (jnp.stack([q["n_alpha"], q["n_beta"]], axis=1),
                jnp.stack([q["mo_energy"], q["mo_energy_beta"]], axis=1))
    return q["n_alpha"], q["mo_energy"]


def _orbital_error(out, batch, ctx: LossContext):
    """Orbital-energy error ``[G, n]`` and mask: occupied + ``ctx.n_virtual`` lowest virtual.

    Per-spin outputs: ``[G, 2, n]``, each spin's occupied + ``n_virtual`` lowest virtual.
    """
    q, pred = batch.globals["qm"], out["qm"]
    n_occ, target = _occupations_and_targets(q, pred)
    available = jnp.minimum(q["mo_energy_count"], pred["n_orbitals"])  # [G]
    available = available.reshape(available.shape + (1,) * (n_occ.ndim - 1))
    limit = jnp.minimum(n_occ + ctx.n_virtual, available)  # [G] or [G, 2]
    mask = jnp.arange(target.shape[-1]) < limit[..., None]
    return pred["mo_energy"] - target, mask


def _gap_error(out, batch):
    """HOMO-LUMO gap error ``[G]`` and mask (per-spin outputs: the open-shell gap,
    :func:`helm_jax.orbitals.homo_lumo_gap_spins`)."""
    q, pred = batch.globals["qm"], out["qm"]
    n_occ, target = _occupations_and_targets(q, pred)
    if _spin_resolved(pred):
        available = jnp.minimum(q["mo_energy_count"], pred["n_orbitals"])
        gap_fn = jax.vmap(orbitals_lib.homo_lumo_gap_spins)
        mask = jax.vmap(orbitals_lib.has_homo_lumo_spins)(n_occ, available)
        return (gap_fn(pred["mo_energy"], n_occ, available)
                - gap_fn(target, n_occ, available)), mask
    homo_lumo = jax.vmap(orbitals_lib.homo_lumo_gap)
    mask = (n_occ > 0) & (q["mo_energy_count"] > n_occ) & (pred["n_orbitals"] > n_occ)
    return homo_lumo(pred["mo_energy"], n_occ) - homo_lumo(target, n_occ), mask


def _target_error(out, batch, name: str):
    q = batch.globals["qm"]
    return out["qm"][name] - q[name], q[name + "_mask"]


@register(needs=("qm",))
def orbital_energies(out, batch, ctx: LossContext) -> LossSums:
    """MSE (Eh^2) of the occupied and ``config.qm.n_virtual`` lowest virtual orbital energies
    (of each spin, both spins' entries in one mean, for a model with beta outputs)."""
    return _mse(*_orbital_error(out, batch, ctx))


@register(needs=("qm",))
def gap(out, batch, ctx: LossContext) -> LossSums:
    """MSE (Eh^2) of the HOMO-LUMO gap (open shells: lowest virtual minus highest occupied
    orbital energy over both spins)."""
    del ctx
    return _mse(*_gap_error(out, batch))


@register(needs=("qm",))
def dipole(out, batch, ctx: LossContext) -> LossSums:
    """MSE (au^2) over dipole components (rotation invariant: ``|mu - mu_ref|^2 / 3``) of the
    total density."""
    del ctx
    return _mse(*_target_error(out, batch, "dipole"))


@register(needs=("polarizability",))
def polarizability(out, batch, ctx: LossContext) -> LossSums:
    """MSE (au^2) over the nine polarisability components (both spins' response)."""
    del ctx
    return _mse(*_target_error(out, batch, "polarizability"))


@register(needs=("qm",))
def orbital_energy_mae(out, batch, ctx: LossContext) -> LossSums:
    """MAE (Eh) over the orbital energies of :func:`orbital_energies`."""
    err, mask = _orbital_error(out, batch, ctx)
    return _mae(jnp.abs(err), mask)


@register(needs=("qm",))
def gap_mae(out, batch, ctx: LossContext) -> LossSums:
    """MAE (Eh) of the HOMO-LUMO gap."""
    del ctx
    err, mask = _gap_error(out, batch)
    return _mae(jnp.abs(err), mask)


@register(needs=("qm",))
def dipole_mae(out, batch, ctx: LossContext) -> LossSums:
    """Mean over molecules of ``|mu - mu_ref|`` (au, vector norm)."""
    del ctx
    err, mask = _target_error(out, batch, "dipole")
    return _mae(jnp.sqrt(jnp.sum(err * err, axis=-1)), mask)


@register(needs=("polarizability",))
def polarizability_mae(out, batch, ctx: LossContext) -> LossSums:
    """MAE (au) over the nine polarisability components."""
    del ctx
    err, mask = _target_error(out, batch, "polarizability")
    return _mae(jnp.abs(err), mask)


def resolve(name: str, modules: tuple[str, ...] = ()) -> Callable[..., LossSums]:
    """The loss registered as ``name``, after importing ``modules`` (a fork's losses).

    Raises:
      ValueError: no such loss, listing the registered names and the modules imported.
    """
    return _lookup(name, modules).fn


def _lookup(name: str, modules: tuple[str, ...]) -> RegisteredLoss:
    for module in _BUILTIN_MODULES + tuple(modules):
        importlib.import_module(module)  # registers the fork's losses
    if name not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}: registered are {registered()}. Register it "
                         "with @helm_jax.losses.register(needs=...) in a module listed in "
                         f"config.loss_modules (imported: {list(modules)}).")
    return _REGISTRY[name]


def needs(weights: dict[str, float], modules: tuple[str, ...] = ()) -> set[str]:
    """The model outputs the nonzero-weighted losses declare (:data:`OUTPUTS`)."""
    out: set[str] = set()
    for name, w in weights.items():
        if w:
            out |= _lookup(name, modules).needs
    return out


def total_loss(partials: dict[str, LossSums], weights: dict[str, float],
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
