"""Optimisers of ``config.optim`` for ``helm_jax.train`` (the plateau schedule is
``optax.contrib.reduce_on_plateau`` and the parameter EMA ``optax.incremental_update``, both
driven by ``helm_jax.train``).

``config.optim`` fields: ``name`` (adamw | adam), ``learning_rate``, ``beta1``, ``beta2``
(Adam's moment decay rates), ``weight_decay``, ``schedule`` (constant | cosine | plateau),
``warmup_steps``, ``final_lr_fraction`` (cosine), ``plateau_factor``, ``plateau_patience``
(evaluations without improvement before the learning rate is multiplied by
``plateau_factor``), ``plateau_rtol``, ``clip_norm`` (0: off), ``ema_decay`` (0: off),
``backbone_lr_scale`` (finetuning).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def _schedule(cfg: ml_collections.ConfigDict, num_steps: int, scale: float = 1.0):
    lr = cfg.learning_rate * scale
    warmup = int(cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), max(num_steps, warmup + 1),
            end_value=lr * cfg.final_lr_fraction)
    if cfg.schedule in ("constant", "plateau"):
        if warmup:
            return optax.linear_schedule(0.0, lr, warmup)
        return lr
    raise ValueError(f"Unknown schedule {cfg.schedule!r}: constant, cosine or plateau.")


def _base(cfg: ml_collections.ConfigDict, schedule):
    if cfg.name == "adamw":
        return optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2,
                           weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return optax.adam(schedule, b1=cfg.beta1, b2=cfg.beta2)
    raise ValueError(f"Unknown optimiser {cfg.name!r}: adamw or adam.")


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` as one scalar factor ``min(1, max_norm / |g|)``.

    optax clips each leaf with an elementwise select and divide, which XLA:CPU will not
    duplicate into the optimiser's per-leaf loops, so a clipped copy of every gradient is
    written and read back. A multiplication by a scalar is fused into those loops.
    """
    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.tree.norm(updates)
        factor = jnp.where(g_norm < max_norm, 1.0, max_norm / g_norm)
        return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def build_optimizer(cfg: ml_collections.ConfigDict, num_steps: int, protocol: str,
                    params) -> optax.GradientTransformation:
    """Clip -> AdamW/Adam with the schedule. The plateau schedule's scale is applied by the
    train step (``TrainState.lr_scale``), not by this transformation.

    Protocols: ``frozen`` routes the backbone to zero updates (its parameters stay
    bit-identical); ``finetune`` trains the backbone at ``backbone_lr_scale`` times the
    learning rate; anything else trains all parameters alike.
    """
    main = _base(cfg, _schedule(cfg, num_steps))
    if protocol in ("frozen", "finetune") and "backbone" in params:
        labels = {k: ("backbone" if k == "backbone" else "rest") for k in params}
        backbone_tx = (optax.set_to_zero() if protocol == "frozen" else
                       _base(cfg, _schedule(cfg, num_steps, cfg.backbone_lr_scale)))
        main = optax.multi_transform({"backbone": backbone_tx, "rest": main}, labels)
    if cfg.clip_norm:
        return optax.chain(clip_by_global_norm(cfg.clip_norm), main)
    return main
