"""``train_and_evaluate(config, workdir)``: Hamiltonian pretraining and energy transfer runs.

The training step is written once for one device's padded batch and mapped over a 1-D
``data`` mesh with ``jax.shard_map`` (``helm_jax.parallel``): masked loss sums are added
over devices before dividing, and gradients of the replicated parameters come out summed.
Resume precedence (big_vision): a checkpoint in the workdir > ``config.transfer.init_from``
(backbone only) > scratch. A run killed at any moment and restarted from its workdir
continues at its last checkpoint with the same data order and reproduces the same losses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from helm_jax import units
from helm_jax import checkpoint as ckpt_lib
from helm_jax import losses as losses_lib
from helm_jax import metrics as metrics_lib
from helm_jax import parallel
from helm_jax.data import datasets, pipeline
from helm_jax.model import assemble, helm
from helm_jax.train_utils import (MetricsLogger, Plateau, build_optimizer, ema_update,
                                  set_lr_scale)


def forward(model: helm.HELM, params, batch, need: set[str],
            ctx: losses_lib.LossContext | None = None) -> dict[str, jax.Array]:
    """Model outputs for one device's batch.

    Forces (``-dE/dR``) when ``need`` has them; ``out["qm"]`` (orbital energies, dipole,
    polarisability of the predicted H, :func:`losses_lib.qm_outputs`) when it has ``qm``.
    """
    if "qm" in need:
        out = forward(model, params, batch, need - {"qm"}, ctx)
        return {**out, "qm": losses_lib.qm_outputs(out, batch, ctx, "polarizability" in need)}
    inputs = helm.batch_inputs(batch)
    ham = "hamiltonian" in need
    if "forces" not in need:
        return model.apply({"params": params}, **inputs, hamiltonian=ham,
                           energy="energy" in need)

    def energy_sum(pos):
        out = model.apply({"params": params}, **{**inputs, "positions": pos},
                          hamiltonian=ham, energy=True)
        return jnp.sum(out["energy"]), out

    (_, out), grad = jax.value_and_grad(energy_sum, has_aux=True)(inputs["positions"])
    return {**out, "forces": -grad}


def _psum(tree):
    return jax.lax.psum(tree, parallel.AXIS)


def make_train_step(model, tx, ctx, weights: dict[str, float], need: set[str],
                    frozen_backbone: bool, ema_decay: float, loss_modules: tuple = ()):
    """Per-device train step ``(params, opt_state, ema, batch) -> (..., metrics)``."""
    loss_fns = {name: losses_lib.resolve(name, loss_modules) for name in weights}

    def step(params, opt_state, ema, batch):
        def loss_fn(p):
            if frozen_backbone:
                p = {**p, "backbone": jax.lax.stop_gradient(p["backbone"])}
            out = forward(model, p, batch, need, ctx)
            partials = {name: fn(out, batch, ctx) for name, fn in loss_fns.items()}
            loss, values = losses_lib.total_loss(partials, weights, reduce=_psum)
            if "hamiltonian" in need:
                mae = losses_lib.hamiltonian_mae(out, batch, ctx)
                values["h_mae"] = mae.combine(_psum(mae.sums))
            return loss, values

        (loss, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            ema = ema_update(ema, params, ema_decay)
        return params, opt_state, ema, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                                        **values}

    return step


class Evaluator:
    """Evaluation of a split: losses, and the field's metrics on full matrices.

    With quantum-chemistry labels it also reports ``losses_lib.QM_METRICS`` (orbital-energy,
    gap, dipole and polarisability errors of the predicted H).
    """

    def __init__(self, model, data: datasets.Data, config, ctx, weights, need, dtype):
        self.model, self.data, self.ctx = model, data, ctx
        self.weights, self.need = weights, need | {"energy"}
        modules = tuple(config.get("loss_modules", ()))
        self.loss_fns = {name: losses_lib.resolve(name, modules) for name in weights}
        if data.spec.qm_targets:
            self.need = self.need | {"qm", "polarizability"}
            self.loss_fns.update({name: losses_lib.resolve(name)
                                  for name in losses_lib.QM_METRICS})
        batch_cfg = datasets.batch_config(config.data)
        if not batch_cfg.budgets:  # one set of shapes for every split: compiled once
            every = np.unique(np.concatenate([v for v in data.splits.values()]))
            plan = pipeline.BatchIterator(data.graphs, every, batch_cfg, prefetch=0)
            batch_cfg = dataclasses.replace(batch_cfg,
                                            budgets=[b.to_dict() for b in plan.budgets])
        self.batch_cfg = batch_cfg
        self.dtype = dtype
        self.max_molecules = config.train.get("max_eval_molecules")

        self._combines = {}

        def apply(params, batch):
            out = forward(model, params, batch, self.need, ctx)
            sums = {}
            for name, fn in self.loss_fns.items():
                partial = fn(out, batch, ctx)
                self._combines[name] = partial.combine  # closes over nothing traced
                sums[name] = partial.sums
            return out, sums
        self._apply = jax.jit(apply)

    def __call__(self, params, split: str) -> dict[str, float]:
        """Metrics of ``split`` (H MAE in Eh, energies in Eh, forces in Eh/A; see keys)."""
        idx = self.data.splits[split]
        if self.max_molecules:
            idx = idx[: int(self.max_molecules)]
        if len(idx) == 0:
            return {}
        it = pipeline.BatchIterator(self.data.graphs, idx, self.batch_cfg, n_devices=1,
                                    shuffle=False, stats=self.data.stats, dtype=self.dtype,
                                    prefetch=0)
        totals: dict[str, dict[str, float]] = {}
        rows, node_layout, edge_layout = [], self.ctx.node_layout, self.ctx.edge_layout
        reader, template = self.data.reader, self.data.template
        for bucket, per_dev in it.plan(0):
            batch = jax.tree.map(lambda x: x[0], it.make_batch(bucket, per_dev))
            out, sums = self._apply(params, batch)
            for name, s in sums.items():
                acc = totals.setdefault(name, {})
                for k, v in s.items():
                    acc[k] = acc.get(k, 0.0) + float(v)
            out = jax.device_get(out)
            fulls = (assemble.batch_to_full(out, batch, node_layout, edge_layout,
                                            self.data.stats)
                     if "hamiltonian" in self.need else [None] * len(per_dev[0]))
            n0 = 0
            for k, i in enumerate(per_dev[0]):
                rec = reader[i]
                row = {}
                if fulls[k] is not None and rec.fock is not None:
                    row.update(metrics_lib.hamiltonian_errors(
                        fulls[k], rec.fock, rec.elements, template.basis, template.ecp or None))
                if rec.energy is not None:
                    row["energy_ae"] = abs(float(out["energy"][k])
                                           - float(batch.globals["energy"][k]))
                n = len(rec.elements)
                if "forces" in out and rec.forces is not None:
                    row["forces_ae"] = float(np.abs(out["forces"][n0:n0 + n]
                                                    - rec.forces).mean())
                n0 += n
                rows.append(row)
        result = metrics_lib.mean_of(rows, sorted({k for r in rows for k in r}))
        val_loss = 0.0
        for name, acc in totals.items():
            value = float(self._combines[name]({k: jnp.asarray(v) for k, v in acc.items()}))
            if name not in self.weights:  # a metric
                result[name] = value
                continue
            result[f"loss_{name}"] = value
            val_loss += self.weights[name] * value
        result["loss"] = val_loss
        return result


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
    need = losses_lib.needs(weights, tuple(config.get("loss_modules", ())))
    if "qm" in need and not data.spec.qm_targets:
        raise ValueError(f"The losses {sorted(weights)} need quantum-chemistry labels: set "
                         "config.qm.enabled=True (data labelled with data_prep/label.py --dipole).")
    model = helm.build_model(config, data.template, data.stats)
    ctx = losses_lib.LossContext.create(data.spec.node_layout, data.spec.edge_layout,
                                        data.stats, n_virtual=config.qm.n_virtual,
                                        s_threshold=config.qm.s_threshold)
    return model, weights, need, ctx


def _init_params(model, batch, seed: int):
    inputs = helm.batch_inputs(jax.tree.map(lambda x: x[0], batch))
    num_graphs = inputs.pop("num_graphs")
    init = jax.jit(lambda rng, i: model.init(rng, **i, num_graphs=num_graphs))  # one compile
    return init(jax.random.PRNGKey(seed), inputs)["params"]


def _transfer_backbone(params, config):
    """Loads the backbone of ``config.transfer.init_from`` into ``params``."""
    if not config.transfer.init_from:
        raise ValueError(f"The {config.transfer.protocol!r} protocol needs a pretrained "
                         "Hamiltonian checkpoint: set --config.transfer.init_from=<workdir>.")
    loaded = ckpt_lib.load_model(config.transfer.init_from)
    mine, theirs = config.model.to_dict(), loaded.config.model.to_dict()
    diff = {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs)
            if mine.get(k) != theirs.get(k)
            and k not in ("remat", "matmul_dtype", "edge_chunk_size", "chunk_edges_above")}
    if diff:
        raise ValueError(f"config.model differs from the pretrained checkpoint "
                         f"{config.transfer.init_from}: {diff} (mine, theirs).")
    backbone = jax.tree.map(lambda a, b: np.asarray(b, a.dtype), params["backbone"],
                            loaded.params["backbone"])
    return {**params, "backbone": backbone}


def _stored_budgets(config, data: datasets.Data, workdir: str) -> pipeline.BatchConfig:
    """The training batch budgets, chosen from a scan once and stored in the workdir.

    ``<workdir>/budgets.json`` keeps the budgets (and the size scan they came from), so a
    resumed run packs molecules into exactly the same shapes and the same order.
    """
    batch_cfg = datasets.batch_config(config.data)
    if batch_cfg.budgets:
        return batch_cfg
    path = os.path.join(workdir, "budgets.json")
    if os.path.exists(path):
        with open(path) as f:
            return dataclasses.replace(batch_cfg, budgets=json.load(f)["budgets"])
    train = data.splits["train"]
    planned = pipeline.BatchIterator(data.graphs, train, batch_cfg, prefetch=0)
    budgets = [b.to_dict() for b in planned.budgets]
    if parallel.is_main_process():  # the others planned the same budgets
        n_node, n_edge = (x[train] for x in data.graphs.sizes())
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"budgets": budgets,
                       "scan": {"molecules": int(len(train)),
                                "atoms": [int(n_node.min()), int(n_node.max())],
                                "edges": [int(n_edge.min()), int(n_edge.max())]}}, f, indent=1)
    return dataclasses.replace(batch_cfg, budgets=budgets)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains a HELM model as ``config`` says, checkpointing and logging into ``workdir``.

    Args:
      config: run configuration (see ``helm_jax/configs/base.py`` for every field).
      workdir: directory for checkpoints, statistics, logs and plots; a checkpoint there is
        resumed automatically.

    Returns:
      ``{"step", "val", "test", "seconds"}`` with the final metrics (H MAE in Eh, energy and
      force errors in Eh and Eh/A).
    """
    t_start = time.time()
    dtype = precision(config)
    parallel.initialize_distributed()
    mesh = parallel.make_mesh(config.get("num_devices"))
    data = datasets.load_data(config, workdir)
    protocol = config.transfer.protocol
    model, weights, need, ctx = model_and_losses(config, data)
    train_it = pipeline.BatchIterator(
        data.graphs, data.splits["train"], _stored_budgets(config, data, workdir),
        n_devices=mesh.size, seed=int(config.seed), stats=data.stats, dtype=dtype,
        prefetch=int(config.data.get("prefetch", 2)))
    num_steps = int(config.train.num_steps)
    first = train_it.make_batch(*train_it.plan(0)[0])
    params = _init_params(model, first, int(config.seed))
    tx = build_optimizer(config.optim, num_steps, protocol, params)
    ema_decay = float(config.optim.get("ema_decay", 0.0))
    plateau = Plateau(config.optim.get("plateau_factor", 0.5),
                      config.optim.get("plateau_patience", 10),
                      config.optim.get("plateau_rtol", 1e-4))
    ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.get("keep_checkpoints", 2)))
    step = 0
    if ckpt.latest_step() is not None:
        abstract = jax.eval_shape(lambda p: (p, {"opt_state": tx.init(p), "ema": p,
                                                 "step": 0}), params)
        params, train_state, meta = ckpt.restore(*abstract)
        train_state = dict(train_state)
        step = int(train_state["step"])
        train_it.set_state(meta["iterator"])
        plateau.load(meta["plateau"])
        print(f"Resumed from {workdir} at step {step}.", flush=True)
    else:
        if protocol in ("frozen", "finetune"):
            params = _transfer_backbone(params, config)
        train_state = {"opt_state": jax.jit(tx.init)(params), "ema": params, "step": 0}
    if ema_decay <= 0:
        train_state["ema"] = None

    step_fn = make_train_step(model, tx, ctx, weights, need, protocol == "frozen", ema_decay,
                              tuple(config.get("loss_modules", ())))
    p_step = parallel.data_parallel(step_fn, mesh, n_replicated=3)
    params = parallel.replicate(params, mesh)
    opt_state = parallel.replicate(train_state["opt_state"], mesh)
    ema = parallel.replicate(train_state["ema"], mesh) if ema_decay > 0 else None
    evaluator = Evaluator(model, data, config, ctx, weights, need, dtype)
    logger = MetricsLogger(workdir, num_steps, start_step=step,
                           active=parallel.is_main_process())

    if step == 0:
        initial = evaluator(params, "test")
        if initial:
            logger.write(0, "test", initial)

    def eval_params():
        return ema if ema is not None else params

    def save(best_val: float | None = None):
        host = jax.device_get
        state = {"opt_state": host(opt_state), "ema": host(ema) if ema is not None else host(
            params), "step": step}
        meta = ckpt_lib.make_meta(config, data.template, data.stats,
                                  iterator=train_it.get_state(), plateau=plateau.state(),
                                  step=step)
        ckpt.save(step, host(params), state, meta)
        if best_val is not None:
            ckpt.save_best(step, host(eval_params()), state, meta, best_val)

    stop = {"sigterm": False}
    previous = signal.getsignal(signal.SIGTERM)
    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
    try:
        stream = iter(train_it)
        while step < num_steps and not stop["sigterm"]:
            batch = next(stream)
            logger.count(int(np.sum(batch.globals["h_mask"] | batch.globals["energy_mask"])))
            params, opt_state, ema, values = p_step(params, opt_state, ema,
                                                   parallel.shard(batch, mesh))
            step += 1
            values = {k: float(v) for k, v in jax.device_get(values).items()}
            if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
                raise FloatingPointError(
                    f"Non-finite loss or gradient at step {step} (loss={values['loss']}, "
                    f"grad_norm={values['grad_norm']}): lower config.optim.learning_rate, set "
                    "config.optim.clip_norm, or check the data with data_prep/verify.py. The "
                    f"last good checkpoint is in {workdir}/checkpoints/latest.")
            log_every = int(config.train.log_every)
            if step % log_every == 0 or step == num_steps:
                logger.write(step, "train", values)
                logger.progress(step, values)
            if step % int(config.train.eval_every) == 0 or step == num_steps:
                val = evaluator(eval_params(), "val")
                if val:
                    logger.write(step, "val", val)
                    scale = plateau.update(val["loss"])
                    if config.optim.schedule == "plateau":
                        opt_state = parallel.replicate(
                            set_lr_scale(jax.device_get(opt_state), scale), mesh)
                    save(best_val=val["loss"])
                logger.plot()
            elif step % int(config.train.checkpoint_every) == 0:
                save()
        if stop["sigterm"]:
            save()
            print(f"SIGTERM: saved step {step} to {workdir}; rerun the same command to resume.",
                  flush=True)
            return {"step": step, "interrupted": True}
        save()
        result = {"step": step, "val": evaluator(eval_params(), "val"),
                  "test": evaluator(eval_params(), "test"),
                  "seconds": time.time() - t_start}
        result["test_step0"] = next((r for r in logger.history
                                     if r["split"] == "test" and r["step"] == 0), None)
        if result["test"]:
            logger.write(step, "test", result["test"])
        logger.plot()
        if parallel.is_main_process():
            _print_summary(result)
        return result
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        logger.close()
        ckpt.close()


def _is_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _print_summary(result: dict) -> None:
    rows = []
    for split in ("val", "test"):
        m = result.get(split) or {}
        cells = [split]
        if "h_mae" in m:
            cells += [f"H MAE {m['h_mae'] * 1e6:.2f} uEh",
                      f"diag {m['h_mae_diag'] * 1e6:.2f}", f"off-diag {m['h_mae_offdiag'] * 1e6:.2f}"]
        if "energy_ae" in m:
            cells.append(f"E MAE {m['energy_ae'] * units.HARTREE_EV * 1e3:.2f} meV")
        if "forces_ae" in m:
            cells.append(f"F MAE {m['forces_ae'] * units.HARTREE_EV * 1e3:.2f} meV/A")
        if "orbital_energy_mae" in m:
            mev = units.HARTREE_EV * 1e3
            cells += [f"orbital energy MAE {m['orbital_energy_mae'] * mev:.1f} meV",
                      f"gap {m['gap_mae'] * mev:.1f} meV", f"dipole {m['dipole_mae']:.4f} au",
                      f"polarizability {m['polarizability_mae']:.3f} au"]
        rows.append(" | ".join(cells))
    first, last = result.get("test_step0") or {}, result.get("test") or {}
    if "h_mae" in first and "h_mae" in last:
        rows.append(f"test H MAE at step 0: {first['h_mae'] * 1e6:.2f} uEh "
                    f"({first['h_mae'] / last['h_mae']:.1f}x the final value)")
    print("\n".join(rows), flush=True)
