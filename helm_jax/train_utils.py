"""Optimisers and logging for ``helm_jax.train`` (the plateau schedule is
``optax.contrib.reduce_on_plateau`` and the parameter EMA ``optax.incremental_update``, both
driven by ``helm_jax.train``).

``config.optim`` fields: ``name`` (adamw | adam), ``learning_rate``, ``weight_decay``,
``schedule`` (constant | cosine | plateau), ``warmup_steps``, ``final_lr_fraction``
(cosine), ``plateau_factor``, ``plateau_patience`` (evaluations without improvement
before the learning rate is multiplied by ``plateau_factor``), ``plateau_rtol``,
``clip_norm`` (0: off), ``ema_decay`` (0: off), ``backbone_lr_scale`` (finetuning).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def _schedule(cfg: ml_collections.ConfigDict, num_steps: int, scale: float = 1.0):
    lr = cfg.learning_rate * scale
    warmup = int(cfg.get("warmup_steps", 0))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), max(num_steps, warmup + 1),
            end_value=lr * cfg.get("final_lr_fraction", 0.01))
    if cfg.schedule in ("constant", "plateau"):
        if warmup:
            return optax.linear_schedule(0.0, lr, warmup)
        return lr
    raise ValueError(f"Unknown schedule {cfg.schedule!r}: constant, cosine or plateau.")


def _base(cfg: ml_collections.ConfigDict, schedule):
    if cfg.name == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return optax.adam(schedule)
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
                       _base(cfg, _schedule(cfg, num_steps, cfg.get("backbone_lr_scale", 1.0))))
        main = optax.multi_transform({"backbone": backbone_tx, "rest": main}, labels)
    if cfg.get("clip_norm"):
        return optax.chain(clip_by_global_norm(cfg.clip_norm), main)
    return main


class MetricsLogger:
    """Progress line, TensorBoard events, ``metrics.jsonl`` and ``learning_curve.png``.

    ``active=False`` (every process but the first of a multi-process run) keeps the history
    in memory and writes and prints nothing.
    """

    def __init__(self, workdir: str, num_steps: int, start_step: int = 0, active: bool = True):
        self.workdir, self.num_steps, self.active = workdir, num_steps, active
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.history = self._load(start_step)
        self._writer = None
        self._t0, self._s0, self._mols = time.time(), start_step, 0

    def _load(self, start_step: int) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        rows = [r for r in rows if r["step"] <= start_step]  # drop what a resume redoes
        if not self.active:
            return rows
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return rows

    @property
    def writer(self):
        """TensorBoard writer (created lazily)."""
        if self._writer is None:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
        return self._writer

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Appends a row and TensorBoard scalars."""
        row = {"step": int(step), "split": split,
               **{k: float(v) for k, v in values.items()}}
        self.history.append(row)
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", float(v), step)

    def count(self, molecules: int) -> None:
        """Adds molecules to the throughput counter."""
        self._mols += molecules

    def progress(self, step: int, values: dict[str, float]) -> str:
        """One progress line: step, loss, H MAE (uEh), throughput, ETA."""
        dt = max(time.time() - self._t0, 1e-9)
        rate = (step - self._s0) / dt
        eta = (self.num_steps - step) / rate if rate > 0 else float("nan")
        parts = [f"step {step}/{self.num_steps}", f"loss {values['loss']:.4g}"]
        if "h_mae" in values:
            parts.append(f"H MAE {values['h_mae'] * 1e6:.1f} uEh")
        if "energy" in values:
            parts.append(f"E RMSE {np.sqrt(values['energy']) * 27211.386:.1f} meV")
        parts += [f"{self._mols / dt:.2f} mol/s", f"ETA {_hms(eta)}"]
        line = " | ".join(parts)
        if self.active:
            print(line, file=sys.stderr, flush=True)
        return line

    def plot(self) -> str:
        """Writes ``learning_curve.png`` (train loss, validation loss and H MAE).

        Draws on a bare ``matplotlib.figure.Figure``: no pyplot state and no backend switch,
        so a notebook's inline plots keep working after training.
        """
        from matplotlib.figure import Figure
        path = os.path.join(self.workdir, "learning_curve.png")
        if not self.active:
            return path
        fig = Figure(figsize=(10, 4))
        axes = fig.subplots(1, 2)
        for split, style in (("train", "-"), ("val", "o-")):
            rows = [r for r in self.history if r["split"] == split]
            if rows:
                axes[0].semilogy([r["step"] for r in rows], [r["loss"] for r in rows], style,
                                 label=split)
                if "h_mae" in rows[0]:
                    axes[1].semilogy([r["step"] for r in rows],
                                     [r["h_mae"] * 1e6 for r in rows], style, label=split)
        axes[0].set(xlabel="step", ylabel="loss")
        axes[1].set(xlabel="step", ylabel="H MAE (uEh)")
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path

    def close(self) -> None:
        """Flushes TensorBoard."""
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

