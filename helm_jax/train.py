"""``train_and_evaluate(config, workdir)``: Hamiltonian pretraining and energy transfer runs.

The training step is written once for one device's padded batch and mapped over a 1-D
``data`` mesh with ``jax.shard_map`` (``helm_jax.parallel``): masked loss sums are added
over devices before dividing, and gradients of the replicated parameters come out summed.
Resume precedence (big_vision): a checkpoint in the workdir > ``config.transfer.init_from``
(backbone only) > scratch. A run killed at any moment and restarted from its workdir
continues at its last checkpoint with the same data order and reproduces the same losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Any

import flax.struct
import jax
import ml_collections
import numpy as np
import optax
from optax import contrib as optax_contrib

from helm_jax import checkpoint as ckpt_lib
from helm_jax import configs
from helm_jax import losses as losses_lib
from helm_jax import parallel, rundir
from helm_jax.data import datasets, pipeline
from helm_jax.evaluate import Evaluator
from helm_jax.model import helm
from helm_jax.metrics_logger import MetricsLogger, print_summary
from helm_jax.optim import build_optimizer


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and changes, as one replicated pytree.

    Attributes:
      params: model parameters.
      opt_state: optimiser state (``optim.build_optimizer``).
      ema: exponential moving average of the parameters (``optax.incremental_update``), or
        None when ``config.optim.ema_decay`` is 0 (checkpoints then store the parameters in
        its place, so every checkpoint has the same items).
      step: steps taken.
      lr_scale: the learning-rate factor of the plateau schedule, an input of the step: the
        host changes this scalar after an evaluation, never the optimiser state.
      plateau: ``optax.contrib.reduce_on_plateau`` state, advanced on the host with each
        validation loss.
      rng: PRNG key, folded with the step every step (stochastic layers or losses of a fork
        take theirs from it; the HELM model itself is deterministic).
    """

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array
    lr_scale: jax.Array
    plateau: Any
    rng: jax.Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, plateau_tx, seed: int,
               ema: bool = False):
        """The state before the first step."""
        return cls(params=params, opt_state=tx.init(params), ema=params if ema else None,
                   step=np.asarray(0, np.int32), lr_scale=np.asarray(1.0, np.float32),
                   plateau=plateau_tx.init(params), rng=jax.random.PRNGKey(seed))

    @property
    def eval_params(self):
        """The parameters to evaluate and keep as the best: the EMA when there is one."""
        return self.params if self.ema is None else self.ema

    def checkpoint_items(self) -> tuple[Any, dict]:
        """``(params, the rest)``: the two pytree items of a checkpoint."""
        rest = {k: getattr(self, k) for k in ("opt_state", "step", "lr_scale", "plateau",
                                              "rng")}
        return self.params, {**rest, "ema": self.eval_params}

    @classmethod
    def from_checkpoint(cls, params, rest: dict, ema: bool) -> "TrainState":
        """Inverse of :meth:`checkpoint_items`."""
        return cls(params=params, **{**rest, "ema": rest["ema"] if ema else None})


def make_train_step(model, tx, ctx, weights: dict[str, float], need: set[str],
                    frozen_backbone: bool = False, ema_decay: float = 0.0,
                    loss_modules: tuple = (), axes: str | tuple[str, ...] = parallel.AXIS):
    """Per-device train step ``(state, batch) -> (state, metrics)`` (map it over the mesh
    with ``parallel.data_parallel(step, mesh)``): masked loss sums are ``psum``-ed over the
    mesh ``axes`` (``data``; ``('data', 'graph')`` with graph parallelism) before dividing,
    so gradients are those of the global batch."""
    loss_fns = {name: losses_lib.resolve(name, loss_modules) for name in weights}

    def _psum(tree):
        return jax.lax.psum(tree, axes)

    def step(state: TrainState, batch):
        def loss_fn(p):
            if frozen_backbone:
                p = {**p, "backbone": jax.lax.stop_gradient(p["backbone"])}
            out = losses_lib.model_outputs(model, p, batch, need, ctx)
            partials = {name: fn(out, batch, ctx) for name, fn in loss_fns.items()}
            loss, values = losses_lib.total_loss(partials, weights, reduce=_psum)
            if "hamiltonian" in need:
                mae = losses_lib.hamiltonian_mae(out, batch, ctx)
                values["h_mae"] = mae.combine(_psum(mae.sums))
                if "node_h_beta" in out:  # spin-resolved: each spin's H MAE too
                    for spin in losses_lib.SPINS:
                        mae = losses_lib.resolve(f"hamiltonian_mae_{spin}")(out, batch, ctx)
                        values[f"h_mae_{spin}"] = mae.combine(_psum(mae.sums))
            return loss, values

        (loss, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        ema = (None if ema_decay <= 0 else
               optax.incremental_update(params, state.ema, 1.0 - ema_decay))
        state = state.replace(params=params, opt_state=opt_state, ema=ema,
                              step=state.step + 1, rng=jax.random.fold_in(state.rng, state.step))
        return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **values}

    return step


def precision(config) -> np.dtype:
    """The run's compute dtype; turns on ``jax_enable_x64`` for float64 (before tracing)."""
    dtype = np.dtype(config.model.dtype)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return dtype


def model_and_losses(config, data: datasets.Data):
    """``(model, weights, need, ctx)`` of a run: the model, the nonzero loss weights, what the
    losses need from the forward pass, and their context (layouts, statistics, QM settings).
    """
    weights = {k: float(v) for k, v in config.losses.items() if float(v)}
    need = losses_lib.needs(weights, tuple(config.loss_modules))
    if "bands" in need and not data.spec.bands:
        raise ValueError(f"The losses {sorted(weights)} need band targets: set "
                         "config.data.periodic=True and config.data.band_targets=True "
                         "(periodic labels from data_prep/label.py --kmesh).")
    if "qm" in need and not data.spec.qm_targets:
        raise ValueError(f"The losses {sorted(weights)} need quantum-chemistry labels: set "
                         "config.qm.enabled=True (data labelled with data_prep/label.py --dipole).")
    _require_labels(weights, data)
    model = helm.build_model(config, data.template, data.stats)
    ctx = losses_lib.LossContext.create(data.spec.node_layout, data.spec.edge_layout,
                                        data.stats, n_virtual=config.qm.n_virtual,
                                        s_threshold=config.qm.s_threshold)
    return model, weights, need, ctx


def _require_labels(weights: dict[str, float], data: datasets.Data) -> None:
    """An energy or force loss needs at least one finite label in the training split."""
    for name, has in (("energy", lambda g: np.isfinite(g.energy)),
                      ("forces", lambda g: g.forces is not None)):
        if name in weights and not any(has(data.graphs[i]) for i in data.splits["train"]):
            raise ValueError(
                f"config.losses.{name}={weights[name]} but none of the "
                f"{len(data.splits['train'])} training structures of {data.reader.path} has "
                f"{'an energy' if name == 'energy' else 'forces'}: use a file with these "
                f"labels (data_prep/label.py{' --forces' if name == 'forces' else ''}) or "
                f"set --config.losses.{name}=0.")


def _init_params(model, batch, seed: int, init_scale: float = 1.0):
    """Initial parameters (``init_scale``: :func:`helm_jax.model.helm.scale_initial_weights`)."""
    inputs = helm.batch_inputs(jax.tree.map(lambda x: x[0], batch))
    num_graphs = inputs.pop("num_graphs")
    init = jax.jit(lambda rng, i: model.init(rng, **i, num_graphs=num_graphs))  # one compile
    return helm.scale_initial_weights(init(jax.random.PRNGKey(seed), inputs)["params"],
                                      float(init_scale))


def _transfer_backbone(params, config):
    """Loads the backbone of ``config.transfer.init_from`` into ``params``."""
    if not config.transfer.init_from:
        raise ValueError(f"The {config.transfer.protocol!r} protocol needs a pretrained "
                         "Hamiltonian checkpoint: set --config.transfer.init_from=<workdir>.")
    loaded = ckpt_lib.load_model(config.transfer.init_from)
    mine, theirs = config.model.to_dict(), loaded.config.model.to_dict()
    diff = {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs)
            if mine.get(k) != theirs.get(k)
            and k not in ("remat", "matmul_dtype", "edge_chunk_size", "chunk_edges_above",
                          *configs.INIT_ONLY_MODEL_FIELDS)}
    if diff:
        raise ValueError(f"config.model differs from the pretrained checkpoint "
                         f"{config.transfer.init_from}: {diff} (mine, theirs).")
    backbone = jax.tree.map(lambda a, b: np.asarray(b, a.dtype), params["backbone"],
                            loaded.params["backbone"])
    return {**params, "backbone": backbone}


def load_data(config: ml_collections.ConfigDict, workdir: str | None = None) -> datasets.Data:
    """The run's data (:func:`helm_jax.data.datasets.load_data`) with the graph options the
    model and losses of ``config`` need: beta labels when ``config.heads.spin`` is not
    "none", and the charge/spin checks of ``config.model.charge_spin_embedding`` (open
    shells need the embedding; spin-resolved labels need a spin-resolved head)."""
    qm = config.qm
    return datasets.load_data(config.data, cutoff=config.model.cutoff,
                              reduced_nodes=config.heads.reduced_nodes,
                              qm_targets=qm.targets if qm.enabled else "",
                              qm_polarizability_ff=qm.self_consistent_polarizability,
                              spin_resolved=config.heads.spin != "none",
                              charge_spin_embedding=bool(config.model.charge_spin_embedding),
                              workdir=workdir)


def _stored_budgets(config, data: datasets.Data, workdir: str) -> pipeline.BatchConfig:
    """The training batch budgets, chosen from a scan once and stored in the workdir.

    ``<workdir>/budgets.json`` keeps the budgets with the batch settings and the size scan
    they came from, so a resumed run packs molecules into exactly the same shapes and the
    same order; budgets stored for other settings or other data are planned anew.
    """
    batch_cfg = datasets.batch_config(config.data)
    if batch_cfg.budgets:
        return batch_cfg
    path = os.path.join(workdir, "budgets.json")
    train = data.splits["train"]
    n_node, n_edge = (x[train] for x in data.graphs.sizes())
    key = {"batch": config.data.batch.to_dict(),
           "scan": {"molecules": int(len(train)), "atoms": [int(n_node.min()), int(n_node.max())],
                    "edges": [int(n_edge.min()), int(n_edge.max())]}}
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if {k: stored.get(k) for k in key} == key:  # other settings or data: planned anew
            return dataclasses.replace(batch_cfg, budgets=stored["budgets"])
    planned = pipeline.BatchIterator(data.graphs, train, batch_cfg, prefetch=0)
    budgets = [b.to_dict() for b in planned.budgets]  # every training molecule fits them
    if parallel.is_main_process():  # the others planned the same budgets
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"budgets": budgets, **key}, f, indent=1)
    return dataclasses.replace(batch_cfg, budgets=budgets)


def plateau_schedule(optim: ml_collections.ConfigDict):
    """``optax.contrib.reduce_on_plateau`` of ``config.optim`` (one value per evaluation)."""
    return optax_contrib.reduce_on_plateau(
        factor=float(optim.plateau_factor), patience=int(optim.plateau_patience),
        rtol=float(optim.plateau_rtol), min_scale=1e-3)


@dataclasses.dataclass
class _Run:
    """What one training run holds besides its state (built by :func:`_setup`)."""

    config: ml_collections.ConfigDict
    workdir: str
    data: datasets.Data
    mesh: Any
    train_it: pipeline.BatchIterator
    step_fn: Any
    plateau_tx: Any
    evaluator: Evaluator
    ckpt: ckpt_lib.Checkpointer
    logger: MetricsLogger

    def save(self, state: TrainState, best_val: float | None = None) -> None:
        """Latest checkpoint (and the best one when ``best_val`` is given)."""
        params, rest = jax.device_get(state.checkpoint_items())
        meta = ckpt_lib.make_meta(self.config, self.data.template, self.data.stats,
                                  iterator=self.train_it.get_state(), step=int(rest["step"]))
        self.ckpt.save(int(rest["step"]), params, rest, meta)
        if best_val is not None:
            self.ckpt.save_best(int(rest["step"]), rest["ema"], rest, meta, best_val)

    def validate(self, state: TrainState) -> TrainState:
        """Evaluates the validation split, logs it, advances the plateau schedule (the
        learning-rate scale when ``optim.schedule`` is "plateau") and saves."""
        val = self.evaluator(state.eval_params, "val")
        if not val:
            return state
        step = int(state.step)
        self.logger.write(step, "val", val)
        if not np.isfinite(val["loss"]):
            raise FloatingPointError(
                f"Non-finite validation loss at step {step} ({val}): the training loss is "
                "finite, so a validation record holds a non-finite label; check the data "
                "with python data_prep/verify.py FILE.")
        _, plateau = self.plateau_tx.update({}, jax.device_get(state.plateau),
                                            value=val["loss"])
        scale = plateau.scale if self.config.optim.schedule == "plateau" else 1.0
        state = state.replace(plateau=parallel.replicate(plateau, self.mesh),
                              lr_scale=parallel.replicate(np.asarray(scale, np.float32),
                                                          self.mesh))
        self.save(state, best_val=val["loss"])
        return state


def _setup(config: ml_collections.ConfigDict, workdir: str) -> tuple[_Run, TrainState]:
    """Data, model, optimiser, checkpointer and logger of a run; its state restored from the
    workdir, or initialised (with a transferred backbone for frozen / finetune)."""
    dtype = precision(config)
    graph_devices = int(config.parallel.graph_devices)
    mesh = parallel.make_mesh(config.num_devices, graph_devices)
    data = load_data(config, workdir)
    protocol = config.transfer.protocol
    model, weights, need, ctx = model_and_losses(config, data)
    if graph_devices > 1 and need & {"qm", "bands"}:
        raise ValueError(f"Losses {sorted(weights)} need each structure's whole H on one "
                         "device (orbital or band energies): use "
                         "--config.parallel.graph_devices=1 with them.")
    train_it = pipeline.BatchIterator(
        data.graphs, data.splits["train"], _stored_budgets(config, data, workdir),
        n_devices=mesh.shape[parallel.AXIS], seed=int(config.seed), stats=data.stats,
        dtype=dtype, prefetch=int(config.data.prefetch), graph_parts=graph_devices,
        partitioner=str(config.parallel.partitioner))
    params = _init_params(model, train_it.make_batch(*train_it.plan(0)[0], partition=False),
                          int(config.seed), config.model.init_scale)
    tx = build_optimizer(config.optim, int(config.train.num_steps), protocol, params)
    plateau_tx = plateau_schedule(config.optim)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints))
    ema_decay = float(config.optim.ema_decay)
    state = TrainState.create(params, tx, plateau_tx, int(config.seed), ema=ema_decay > 0)
    if ckpt.latest_step() is not None:
        abstract = jax.eval_shape(lambda s: s.checkpoint_items(), state)
        params, rest, meta = ckpt.restore(*abstract)
        rundir.check_resume_config(meta["config"], config, workdir)
        state = TrainState.from_checkpoint(params, rest, ema=ema_decay > 0)
        train_it.set_state(meta["iterator"])
        print(f"Resumed from {workdir} at step {int(state.step)}.", flush=True)
    elif protocol in ("frozen", "finetune"):
        params = _transfer_backbone(params, config)
        state = TrainState.create(params, tx, plateau_tx, int(config.seed), ema=ema_decay > 0)
    step_fn = parallel.data_parallel(make_train_step(
        model, tx, ctx, weights, need, protocol == "frozen", ema_decay,
        tuple(config.loss_modules), parallel.mesh_axes(mesh)), mesh)
    run = _Run(config=config, workdir=workdir, data=data, mesh=mesh, train_it=train_it,
               step_fn=step_fn, plateau_tx=plateau_tx,
               evaluator=Evaluator(model, data, config, ctx, weights, need, dtype,
                                   graph_mesh=parallel.make_mesh(graph_devices, graph_devices)
                                   if graph_devices > 1 else None,
                                   partitioner=str(config.parallel.partitioner)),
               ckpt=ckpt, logger=MetricsLogger(workdir, int(config.train.num_steps),
                                               start_step=int(state.step),
                                               active=parallel.is_main_process()))
    return run, parallel.replicate(state, mesh)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains a HELM model as ``config`` says, checkpointing and logging into ``workdir``.

    Args:
      config: run configuration (see ``helm_jax/configs/base.py`` for every field).
      workdir: directory for checkpoints, statistics, logs and plots; a checkpoint there is
        resumed automatically.

    Returns:
      ``{"step", "val", "test", "seconds"}`` with the final metrics (H MAE in Eh, energy and
      force errors in Eh and Eh/A); ``{"step", "interrupted"}`` after a SIGTERM.
    """
    parallel.initialize_distributed()
    with rundir.RunLock(workdir) if parallel.is_main_process() else contextlib.nullcontext():
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    t_start = time.time()
    run, state = _setup(config, workdir)
    num_steps, log_every = int(config.train.num_steps), int(config.train.log_every)
    patience = int(config.train.get("early_stop_patience", 0))
    if int(state.step) == 0 and (initial := run.evaluator(state.params, "test")):
        run.logger.write(0, "test", initial)
    # An early-stopped run that is rerun stays stopped.
    stopped = patience > 0 and evaluations_since_best(run.logger.history) >= patience
    with _sigterm_flag() as stop, run.ckpt, run.logger:
        stream = iter(run.train_it)
        while int(state.step) < num_steps and not stop["sigterm"] and not stopped:
            batch = next(stream)
            run.logger.count(_molecules(batch))
            state, values = run.step_fn(state, parallel.shard(batch, run.mesh))
            step, values = int(state.step), {k: float(v) for k, v in
                                             jax.device_get(values).items()}
            _check_finite(values, step, run, batch)
            if step % log_every == 0 or step == num_steps:
                run.logger.write(step, "train", values)
                run.logger.progress(step, values)
            if step % int(config.train.eval_every) == 0 or step == num_steps:
                state = run.validate(state)
                run.logger.plot()
                if (since := evaluations_since_best(run.logger.history)) >= patience > 0:
                    print(f"Early stop at step {step}: the validation loss has not improved "
                          f"for {since} evaluations (train.early_stop_patience={patience}).",
                          flush=True)
                    stopped = True
            elif step % int(config.train.checkpoint_every) == 0:
                run.save(state)
        run.save(state)
        if stop["sigterm"]:
            print(f"SIGTERM: saved step {int(state.step)} to {workdir}; rerun the same "
                  "command to resume.", flush=True)
            return {"step": int(state.step), "interrupted": True}
        return _finish(run, state, time.time() - t_start)


def evaluations_since_best(history: list[dict]) -> int:
    """Validation rows of a run's log (``MetricsLogger.history``) after the one with the
    lowest loss (0 when the last is the best, or there is none): early stopping's count,
    rebuilt from the log so that a resumed run continues it."""
    losses = [r["loss"] for r in history if r["split"] == "val" and "loss" in r]
    if not losses:
        return 0
    return len(losses) - 1 - int(np.argmin(losses))


def _finish(run: _Run, state: TrainState, seconds: float) -> dict[str, Any]:
    """Final validation and test metrics, logged, plotted and printed."""
    result = {"step": int(state.step), "val": run.evaluator(state.eval_params, "val"),
              "test": run.evaluator(state.eval_params, "test"), "seconds": seconds}
    result["test_step0"] = next((r for r in run.logger.history
                                 if r["split"] == "test" and r["step"] == 0), None)
    if result["test"]:
        run.logger.write(result["step"], "test", result["test"])
    run.logger.plot()
    if parallel.is_main_process():
        print_summary(result)
        if run.data.spec.periodic and len(run.data.splits.get("test", ())):
            # Bands on and off the k-mesh, gaps, real-space errors by shell, band plots.
            from helm_jax import evaluate_periodic  # pylint: disable=import-outside-toplevel
            result["periodic_test"] = evaluate_periodic.evaluate_periodic(
                run.evaluator.model, state.eval_params, run.data, "test",
                workdir=run.workdir, dtype=run.evaluator.dtype)["summary"]
    return result


def _molecules(batch) -> int:
    """Labelled molecules in a stacked step batch (each once with graph parallelism, whose
    ``[D, P, ...]`` parts all carry every graph's globals)."""
    labelled = batch.globals["h_mask"] | batch.globals["energy_mask"]
    return int(np.sum(labelled[:, 0] if "halo_send" in batch.globals else labelled))


def _check_finite(values: dict[str, float], step: int, run: _Run, batch) -> None:
    """Stops on a non-finite loss or gradient, naming the checkpoint to go back to and the
    likely cause: the data when the batch holds a non-finite label, else the optimisation."""
    if np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"]):
        return
    bad = sorted(jax.tree_util.keystr(path) for path, x in
                 jax.tree_util.tree_leaves_with_path(batch)
                 if np.asarray(x).dtype.kind == "f" and not np.all(np.isfinite(x)))
    cause = (f"this batch holds non-finite labels ({', '.join(bad)}): check the data with "
             "python data_prep/verify.py FILE" if bad else
             "the batch's labels are finite, so the optimisation diverged: lower "
             "--config.optim.learning_rate or set --config.optim.clip_norm")
    latest = run.ckpt.latest_step()
    where = (f"the last good checkpoint is step {latest} in {run.workdir}/checkpoints/latest "
             "(a rerun resumes from it)" if latest is not None else
             "no checkpoint was saved yet (a rerun starts from step 0)")
    raise FloatingPointError(
        f"Non-finite loss or gradient at step {step} (loss={values['loss']}, "
        f"grad_norm={values['grad_norm']}): {cause}; {where}.")


class _sigterm_flag:
    """Context manager: ``{"sigterm": bool}`` set by SIGTERM (main thread only)."""

    def __enter__(self):
        self.flag = {"sigterm": False}
        self.main = _is_main_thread()
        if self.main:
            self.previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, lambda *_: self.flag.update(sigterm=True))
        return self.flag

    def __exit__(self, *exc):
        if self.main:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _is_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
