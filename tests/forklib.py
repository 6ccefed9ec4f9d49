"""A research fork's own loss, as the README shows: one function, named in a config."""

import jax.numpy as jnp

from helm_jax.losses import Partial, edge_error


def offdiag_l1(out, batch, ctx):
    """Mean absolute error of the off-diagonal block irreps."""
    err, mask = edge_error(out, batch, ctx)  # [E, D_edge] each
    return Partial({"ae": jnp.sum(jnp.where(mask, jnp.abs(err), 0.0)), "n": jnp.sum(mask)},
                   lambda s: s["ae"] / s["n"])
