"""Band-structure losses of periodic graphs: band energies and indirect gaps of the predicted H(k).

The model predicts real-space blocks ``H_ij(T)`` on the directed edges ``(i, j, T)`` of a
periodic graph (docs/periodic.md); :func:`band_outputs` Bloch-sums them at each graph's
k-points (:func:`helm_jax.kspace.hamiltonian_k`, ``H(k) = sum_T exp(+2 pi i k . T) H(T)``)
and solves ``H(k) c = e S(k) c`` with the labelled overlap
(:func:`helm_jax.kspace.band_energies`). The losses compare the lowest ``band_count`` band
energies at the real k-points, and the indirect gap of insulators, with the targets in
``batch.globals["kspace"]`` (per graph, padded; built by the batch builder):

* ``kpts`` float ``[G, K, 3]`` fractional, ``k_mask`` bool ``[G, K]`` (real k-points);
* ``entry_src``, ``entry_dest``, ``entry_edge`` int32 ``[G, M]`` the Bloch-sum entries
  (:func:`helm_jax.kspace.bloch_entries`; -1 padding; ``entry_src`` and ``entry_edge``
  index the whole batch);
* ``ao_mask`` bool ``[G, n]``; ``overlap_re``, ``overlap_im`` float ``[G, K, n, n]`` S(k);
* ``bands`` float ``[G, K, n]`` target band energies (Eh, ascending), ``band_count`` int32
  ``[G]`` (lowest bands compared), ``n_occ`` int32 ``[G]`` (occupied bands, two electrons
  each), ``band_mask`` bool ``[G]``, ``gap`` float ``[G]`` with ``gap_mask`` bool ``[G]``
  (insulators only);

and ``batch.edges["translation"]`` float ``[E, 3]`` the integer T of every edge.

Registered: losses ``band_energy`` and ``band_gap`` (``sqrt(MSE) + MSE`` in Eh, the form
of the ``hamiltonian`` loss, so that weights of order one balance them against it), metrics
``band_energy_mae`` and ``band_gap_mae`` (Eh). They declare the output ``bands``, which
:func:`helm_jax.losses.model_outputs` computes once per step with :func:`band_outputs`
(called directly, they compute it themselves when ``out`` has no ``"bands"`` entry).
Restricted (closed-shell) predictions only: ``node_h`` and ``edge_h`` are used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from helm_jax import kspace
from helm_jax import losses
from helm_jax.data import statistics as stats_lib


def band_outputs(out, batch, ctx: losses.LossContext) -> dict[str, jax.Array]:
    """Band energies of every graph's predicted H(k) at its k-points.

    Args:
      out: model outputs with ``node_h [N, D_node]`` (standardised l = 0, as the model
        emits them) and ``edge_h [E, D_edge]``.
      batch: padded ``jraph.GraphsTuple`` with ``globals["kspace"]`` (module docstring) and
        ``edges["translation"] [E, 3]``.
      ctx: the loss context (layouts, node statistics, ``s_threshold``).

    Returns:
      ``{"band_energy": [G, K, n] ascending (Eh), "n_bands": int [G, K]}``; entries from
      ``n_bands`` on are dropped overlap directions and padded AOs (sorted last).
    """
    ks = batch.globals["kspace"]
    z = batch.nodes["species"]
    node = stats_lib.destandardize_nodes(out["node_h"], z, ctx.node_mean, ctx.node_std,
                                         ctx.node_layout.muls[0])
    nodes = ctx.node_layout.irreps_to_blocks(node)  # [N, A, A]
    edges = ctx.edge_layout.irreps_to_blocks(out["edge_h"])  # [E, A, A]
    flat = jnp.concatenate([nodes.reshape(-1), edges.reshape(-1)])
    translations = batch.edges["translation"]
    n = ks["ao_mask"].shape[-1]

    def one_graph(kpts, src, dest, edge, ao_mask, s_re, s_im):
        hk = kspace.hamiltonian_k(flat, src, dest, edge, translations, kpts, n)
        sk = jax.lax.complex(s_re.astype(flat.dtype), s_im.astype(flat.dtype))
        return kspace.band_energies(hk, sk, ao_mask, ctx.s_threshold)

    e, n_bands = jax.vmap(one_graph)(ks["kpts"], ks["entry_src"], ks["entry_dest"],
                                     ks["entry_edge"], ks["ao_mask"], ks["overlap_re"],
                                     ks["overlap_im"])
    return {"band_energy": e, "n_bands": n_bands}


def _bands(out, batch, ctx: losses.LossContext):
    """``out["bands"]`` if the training step precomputed it, else :func:`band_outputs`."""
    return out["bands"] if "bands" in out else band_outputs(out, batch, ctx)


def _band_error(out, batch, ctx: losses.LossContext):
    """Band-energy error ``[G, K, n]`` and mask: the lowest ``band_count`` real bands at the
    real k-points of graphs with band targets."""
    ks = batch.globals["kspace"]
    pred = _bands(out, batch, ctx)
    e = pred["band_energy"]
    limit = jnp.minimum(ks["band_count"][:, None], pred["n_bands"])  # [G, K]
    mask = ((jnp.arange(e.shape[-1]) < limit[..., None]) & ks["k_mask"][..., None]
            & ks["band_mask"][:, None, None])
    return e - ks["bands"].astype(e.dtype), mask


def _gap_error(out, batch, ctx: losses.LossContext):
    """Indirect-gap error ``[G]`` and mask (graphs with a gap target whose predicted bands
    include band ``n_occ`` at every real k-point)."""
    ks = batch.globals["kspace"]
    pred = _bands(out, batch, ctx)
    e = pred["band_energy"]
    gap = jax.vmap(kspace.band_gap)(e, ks["n_occ"], ks["k_mask"])
    fewest = jnp.min(jnp.where(ks["k_mask"], pred["n_bands"], e.shape[-1]), axis=-1)  # [G]
    mask = ks["gap_mask"] & (ks["n_occ"] > 0) & (fewest > ks["n_occ"])
    return gap - ks["gap"].astype(e.dtype), mask


@losses.register(needs=("bands",))
def band_energy(out, batch, ctx: losses.LossContext) -> losses.LossSums:
    """``sqrt(MSE) + MSE`` (Eh) of the lowest ``band_count`` band energies over the real
    k-points."""
    return _rmse_plus_mse(*_band_error(out, batch, ctx))


@losses.register(needs=("bands",))
def band_gap(out, batch, ctx: losses.LossContext) -> losses.LossSums:
    """``sqrt(MSE) + MSE`` (Eh) of the indirect band gap (insulators with a gap target)."""
    return _rmse_plus_mse(*_gap_error(out, batch, ctx))


def _rmse_plus_mse(err, mask) -> losses.LossSums:
    """The ``hamiltonian`` loss form (:func:`helm_jax.losses.rmse_plus_mse`) of masked errors."""
    return losses.LossSums(losses._mse(err, mask).sums, losses.rmse_plus_mse)


@losses.register(needs=("bands",))
def band_energy_mae(out, batch, ctx: losses.LossContext) -> losses.LossSums:
    """MAE (Eh) over the band energies of :func:`band_energy`."""
    err, mask = _band_error(out, batch, ctx)
    return losses._mae(jnp.abs(err), mask)


@losses.register(needs=("bands",))
def band_gap_mae(out, batch, ctx: losses.LossContext) -> losses.LossSums:
    """MAE (Eh) of the indirect band gap."""
    err, mask = _gap_error(out, batch, ctx)
    return losses._mae(jnp.abs(err), mask)
