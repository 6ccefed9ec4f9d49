"""A research fork's own losses, as docs/model_and_training.md shows: one registered function
each, named in a config."""

import jax.numpy as jnp

from helm_jax import losses


@losses.register("offdiag_l1", needs=("hamiltonian",))
def offdiag_l1(out, batch, ctx):
    """Mean absolute error of the off-diagonal block irreps."""
    err, mask = losses.edge_error(out, batch, ctx)  # [E, D_edge] each
    return losses.LossSums({"ae": jnp.sum(jnp.where(mask, jnp.abs(err), 0.0)),
                            "n": jnp.sum(mask)}, lambda s: s["ae"] / s["n"])


@losses.register("force_l1", needs=("forces",))
def force_l1(out, batch, ctx):
    """Mean absolute error of the force components (Eh/A): reads ``out["forces"]``."""
    del ctx
    mask = batch.nodes["forces_mask"] & (batch.nodes["species"] > 0)
    ae = jnp.sum(jnp.where(mask[:, None], jnp.abs(out["forces"] - batch.nodes["forces"]), 0.0))
    return losses.LossSums({"ae": ae, "n": 3.0 * jnp.sum(mask)},
                           lambda s: s["ae"] / s["n"])
