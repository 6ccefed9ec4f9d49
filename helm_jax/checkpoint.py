"""Checkpoints that carry everything needed to rebuild the model (orbax CheckpointManager).

A workdir holds two managers:

* ``checkpoints/latest``: periodic saves (and one on SIGTERM); the run resumes from here.
* ``checkpoints/best``: the checkpoint with the lowest validation loss.

Each checkpoint has three items: ``params`` (model parameters), ``train_state`` (optimiser
state, EMA parameters, step) and ``meta`` (JSON: the config, the basis template, the
per-element statistics, the data-iterator position and the learning-rate plateau state).
``load_model(path)`` rebuilds a model from a checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from helm_jax import basis as basis_lib
from helm_jax import configs
from helm_jax.data.statistics import Statistics


class Checkpointer:
    """Latest and best checkpoints of one workdir.

    Args:
      workdir: the run's directory.
      keep: number of latest checkpoints kept.
    """

    def __init__(self, workdir: str, keep: int = 2):
        root = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.latest = ocp.CheckpointManager(
            os.path.join(root, "latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False))
        self.best = ocp.CheckpointManager(
            os.path.join(root, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m["val_loss"], best_mode="min",
                enable_async_checkpointing=False))

    @staticmethod
    def _args(params, train_state, meta):
        return ocp.args.Composite(params=ocp.args.StandardSave(params),
                                  train_state=ocp.args.StandardSave(train_state),
                                  meta=ocp.args.JsonSave(meta))

    def save(self, step: int, params, train_state, meta: dict) -> None:
        """Saves the latest checkpoint at ``step`` (blocking; a no-op if it exists)."""
        if self.latest.latest_step() == step:
            return
        self.latest.save(step, args=self._args(params, train_state, meta), force=True)
        self.latest.wait_until_finished()

    def save_best(self, step: int, params, train_state, meta: dict, val_loss: float) -> None:
        """Offers a checkpoint to the best manager (kept if its val_loss is the lowest)."""
        self.best.save(step, args=self._args(params, train_state, meta),
                       metrics={"val_loss": float(val_loss)}, force=True)
        self.best.wait_until_finished()

    def latest_step(self) -> int | None:
        """Step of the newest latest checkpoint, or None."""
        return self.latest.latest_step()

    def restore(self, abstract_params, abstract_train_state, step: int | None = None):
        """Restores ``(params, train_state, meta)`` of the latest (or given) step."""
        step = self.latest.latest_step() if step is None else step
        out = self.latest.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            train_state=ocp.args.StandardRestore(abstract_train_state),
            meta=ocp.args.JsonRestore()))
        return out["params"], out["train_state"], out["meta"]

    def close(self) -> None:
        """Releases the managers."""
        self.latest.close()
        self.best.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def make_meta(config: ml_collections.ConfigDict, template: basis_lib.Template,
              stats: Statistics, **extra: Any) -> dict:
    """The JSON item of a checkpoint."""
    return {"config": json.loads(config.to_json_best_effort()),
            "template": template.to_dict(), "statistics": stats.to_dict(), **extra}


@dataclasses.dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint alone."""

    config: ml_collections.ConfigDict
    template: basis_lib.Template
    stats: Statistics
    params: Any
    step: int
    meta: dict


def find_checkpoint_dir(path: str) -> tuple[str, int]:
    """Accepts a workdir, a ``checkpoints/{latest,best}`` manager dir or a step dir."""
    path = os.path.abspath(path)
    for sub in ("checkpoints/best", "checkpoints/latest", "best", "latest", ""):
        d = os.path.join(path, sub) if sub else path
        if os.path.isdir(d):
            steps = [int(s) for s in os.listdir(d) if s.isdigit()]
            if steps:
                return d, max(steps)
    parent, name = os.path.split(path)
    if name.isdigit() and os.path.isdir(path):
        return parent, int(name)
    raise FileNotFoundError(f"No checkpoint found under {path!r}: pass a workdir of "
                            "experiments/run.py or one of its checkpoints/{best,latest} dirs.")


def _latest_step(path: str) -> int | None:
    """The newest ``checkpoints/latest`` step when ``path`` is a workdir, else None."""
    latest = os.path.join(path, "checkpoints", "latest")
    return find_checkpoint_dir(latest)[1] if os.path.isdir(latest) else None


def trained_steps(path: str) -> int:
    """Steps a run trained: the newest ``checkpoints/latest`` step of a workdir, else an
    exported model's ``trained_steps`` (else its step)."""
    step = _latest_step(path)
    if step is not None:
        return step
    loaded = load_model(path)
    return int(loaded.meta.get("trained_steps", loaded.step))


def load_model(path: str, which: str = "best") -> LoadedModel:
    """Loads params and metadata from a checkpoint (no optimiser state needed).

    The parameters are those the run evaluates: a training checkpoint's EMA of the
    parameters when it kept one (``train_state["ema"]``; a ``latest`` checkpoint's
    ``params`` item holds the raw ones), otherwise its ``params``.

    Args:
      path: workdir, manager directory or step directory.
      which: prefer ``"best"`` or ``"latest"`` when ``path`` is a workdir.
    """
    if os.path.isdir(os.path.join(path, "checkpoints", which)):
        path = os.path.join(path, "checkpoints", which)
    directory, step = find_checkpoint_dir(path)
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, enable_async_checkpointing=False))
    items = {"params": ocp.args.StandardRestore(), "meta": ocp.args.JsonRestore()}
    if os.path.isdir(os.path.join(directory, str(step), "train_state")):
        items["train_state"] = ocp.args.StandardRestore()
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    mngr.close()
    params = out["params"]
    if "train_state" in items and isinstance(out["train_state"], dict):
        params = out["train_state"].get("ema", params)
    meta = out["meta"]
    config = configs.complete(meta["config"])
    return LoadedModel(config=config, template=basis_lib.Template.from_dict(meta["template"]),
                       stats=Statistics.from_dict(meta["statistics"]), params=params,
                       step=step, meta=meta)


def export_model(path: str, out: str, which: str = "best", **extra: Any) -> str:
    """Writes the parameters and metadata of a checkpoint, without the optimiser state, to
    ``<out>/<step>`` (what :func:`load_model` and ``Predictor.from_checkpoint`` read): a
    model to publish or commit. ``extra`` entries are added to the metadata (e.g. test
    metrics), and ``trained_steps``, the run's last step, when ``path`` is a workdir (the
    exported step is the best one). Returns the step directory; refuses to overwrite an
    existing ``out``.
    """
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty: export into a new folder "
                              "(or remove the old export first).")
    loaded = load_model(path, which)
    if (step := _latest_step(path)) is not None and "trained_steps" not in loaded.meta:
        extra = {"trained_steps": step, **extra}
    mngr = ocp.CheckpointManager(os.path.abspath(out), options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False))
    mngr.save(loaded.step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(loaded.params),
        meta=ocp.args.JsonSave({**loaded.meta, **extra})), force=True)
    mngr.wait_until_finished()
    mngr.close()
    return os.path.join(out, str(loaded.step))
