"""Learning curves: validation H MAE against training steps and seconds, for one config.

    python benchmarks/learning_curve.py --config=experiments/md17.py:ethanol,curve \\
        --config.data.path=labels/ethanol_train_pbe_svp_df.h5 --seconds=600 \\
        --name=default --out=benchmarks/results/learning_curves
    python benchmarks/learning_curve.py --plot benchmarks/results/learning_curves/a.json \\
        benchmarks/results/learning_curves/b.json --out=docs/learning_efficiency.png
    python benchmarks/learning_curve.py --seeds runs/a_seed0.json runs/a_seed1.json ...

A run trains ``--config`` (any ``--config.<field>=`` override) on its train split for a
fixed budget (``--seconds`` of training and/or ``--max_steps``) and evaluates the
validation split at steps 100, 200, 400, ... (doubling), every ``--eval_every`` steps and at
the end. The metric is the field's H MAE: the mean absolute error over every entry of each
validation molecule's full predicted H in PySCF AO order (uEh), averaged over molecules,
the number ``experiments/evaluate.py`` reports. Training seconds are wall time of the
training steps only (the first step's compilation included, evaluations excluded).

Output: ``<out>/<name>.json`` with the config, the curve rows ``{step, seconds, h_mae_uEh,
h_mae_diag_uEh, h_mae_offdiag_uEh, train_loss}`` (plus ``h_mae_alpha_uEh``,
``h_mae_beta_uEh`` over the open-shell molecules when there are any), the training loss
every ``--log_every`` steps (``train_rows``) and the run's summary; ``--plot`` draws several
runs on one figure (H MAE against steps and against seconds, log-log; ``--labels`` names
them) and prints a Markdown table of H MAE at steps 100 ... 3,200 and after the time
budget; ``--seeds`` prints each seed's H MAE at steps 100 ... 800 and the median per
setting, for runs named ``<setting>_seed<N>``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a script, so tests can import this)."""
    config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                    lock_config=True)
    flags.DEFINE_string("name", "run", "Name of the curve (file name and legend).")
    flags.DEFINE_string("out", "benchmarks/results/learning_curves",
                        "Folder of the curve JSON files (with --plot: the figure's path).")
    flags.DEFINE_float("seconds", 600.0, "Training-time budget (s); 0: no limit.")
    flags.DEFINE_integer("max_steps", 0, "Step budget; 0: no limit.")
    flags.DEFINE_integer("eval_every", 500, "Also evaluate every this many steps.")
    flags.DEFINE_integer("log_every", 20, "Record the mean training loss every this many "
                         "steps.")
    flags.DEFINE_integer("threads", 2, "CPUs the process is pinned to (0: no pinning).")
    flags.DEFINE_bool("plot", False,
                      "Plot the JSON files given as arguments instead of training.")
    flags.DEFINE_list("labels", [], "With --plot: legend names, one per JSON file "
                      "(default: each run's name).")
    flags.DEFINE_bool("seeds", False,
                      "Print per-seed values and medians of the JSON files given as "
                      "arguments, grouped by name without its '_seed<N>' suffix.")


CHECKPOINTS = (100, 200, 400, 800, 1600, 3200, 6400, 12800)


def _eval_steps(every: int):
    """Steps at which to evaluate: doubling from 100, plus every ``every`` steps."""
    def due(step: int) -> bool:
        return step in CHECKPOINTS or (every > 0 and step % every == 0)
    return due


class Trainer:
    """One training run of ``config`` on its train split, as the curves run it: one device,
    the config's optimiser without its schedule's plateau (a constant or cosine rate over
    ``max_steps``), shuffled batches of the train split. Also used by
    ``benchmarks/step_window_probe.py``.

    Attributes: ``data``, ``model``, ``ctx``, ``weights``, ``need``, ``dtype``, ``state``
    (replicated :class:`helm_jax.train.TrainState`), ``step`` (steps taken).
    """

    def __init__(self, config, max_steps: int = 0):
        from helm_jax import parallel, train
        from helm_jax.data import datasets, pipeline
        from helm_jax.optim import build_optimizer

        self.config, self.dtype = config, train.precision(config)
        self.mesh = parallel.make_mesh(1)
        self.data = train.load_data(config)
        self.model, self.weights, self.need, self.ctx = train.model_and_losses(config,
                                                                               self.data)
        it = pipeline.BatchIterator(self.data.graphs, self.data.splits["train"],
                                    datasets.batch_config(config.data), n_devices=1,
                                    seed=int(config.seed), stats=self.data.stats,
                                    dtype=self.dtype, prefetch=2)
        first = it.make_batch(*it.plan(0)[0])
        params = train._init_params(self.model, first, int(config.seed),
                                    config.model.init_scale)
        self.tx = build_optimizer(config.optim,
                                  min(max_steps or 10 ** 9, int(config.train.num_steps)),
                                  "none", params)
        self._step = parallel.data_parallel(train.make_train_step(
            self.model, self.tx, self.ctx, self.weights, self.need,
            loss_modules=tuple(config.loss_modules)), self.mesh)
        self.state = parallel.replicate(train.TrainState.create(
            params, self.tx, train.plateau_schedule(config.optim), int(config.seed)),
            self.mesh)
        self._stream, self.step = iter(it), 0

    def next_batch(self):
        """The next training batch, placed on the mesh."""
        from helm_jax import parallel
        return parallel.shard(next(self._stream), self.mesh)

    def train_step(self, batch) -> float:
        """One optimiser step on ``batch``; returns its loss (blocks until done)."""
        self.state, values = self._step(self.state, batch)
        self.step += 1
        return float(values["loss"])


def run_curve(config, seconds: float, max_steps: int, eval_every: int,
              log_every: int = 20) -> dict:
    """Trains ``config`` for the budget; returns ``{"rows", "train_rows", "summary"}``:
    validation rows (see the module doc) and the mean training loss of every ``log_every``
    steps."""
    import jax
    import numpy as np

    from helm_jax.evaluate import Evaluator
    from helm_jax.model import helm

    run = Trainer(config, max_steps)
    data, model, ctx, weights, need, dtype = (run.data, run.model, run.ctx, run.weights,
                                              run.need, run.dtype)
    steps_cap = max_steps or 10 ** 9
    evaluator = Evaluator(model, data, config, ctx, weights, need, dtype)
    due = _eval_steps(eval_every)
    rows, step, trained, losses, train_rows, window = [], 0, 0.0, [], [], []

    def evaluate():
        m = evaluator(run.state.params, "val")
        row = {"step": step, "seconds": round(trained, 3),
               "h_mae_uEh": m["h_mae"] * 1e6, "h_mae_diag_uEh": m["h_mae_diag"] * 1e6,
               "h_mae_offdiag_uEh": m["h_mae_offdiag"] * 1e6,
               "train_loss": float(np.mean(losses)) if losses else None}
        for spin in ("alpha", "beta"):  # open-shell molecules of the split, per spin
            if f"h_mae_{spin}" in m:
                row[f"h_mae_{spin}_uEh"] = m[f"h_mae_{spin}"] * 1e6
        rows.append(row)
        print(json.dumps(row), flush=True)
        losses.clear()

    n_params = helm.count_params(jax.device_get(run.state.params))
    while step < steps_cap and (seconds <= 0 or trained < seconds):
        batch = run.next_batch()
        t0 = time.perf_counter()
        loss = run.train_step(batch)
        trained += time.perf_counter() - t0
        step += 1
        losses.append(loss)
        window.append(loss)
        if log_every and step % log_every == 0:
            train_rows.append({"step": step, "seconds": round(trained, 3),
                               "train_loss": float(np.mean(window))})
            window.clear()
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        if due(step):
            evaluate()
    if not rows or rows[-1]["step"] != step:
        evaluate()
    best = min(rows, key=lambda r: r["h_mae_uEh"])
    summary = {"steps": step, "train_seconds": round(trained, 1),
               "final_h_mae_uEh": rows[-1]["h_mae_uEh"], "best_h_mae_uEh": best["h_mae_uEh"],
               "best_step": best["step"], "params": n_params,
               "n_train": int(len(data.splits["train"])), "n_val": int(len(data.splits["val"]))}
    return {"rows": rows, "train_rows": train_rows, "summary": summary}


def at_step(rows: list[dict], step: int):
    """H MAE at ``step`` (None if not evaluated there)."""
    return next((r["h_mae_uEh"] for r in rows if r["step"] == step), None)


def table(curves: dict[str, dict], steps=CHECKPOINTS[:6]) -> str:
    """Markdown table: H MAE at the doubling steps and after the time budget."""
    head = "| run | " + " | ".join(f"{s:,}" for s in steps) + " | end of budget (steps; best) |"
    lines = [head, "|" + "---|" * (len(steps) + 2)]
    for name, c in curves.items():
        cells = [f"{v:,.0f}" if v is not None else "-" for v in
                 (at_step(c["rows"], s) for s in steps)]
        s = c["summary"]
        cells.append(f"{s['final_h_mae_uEh']:,.0f} ({s['steps']:,} steps in "
                     f"{s['train_seconds']:.0f} s; best {s['best_h_mae_uEh']:,.0f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(paths: list[str], steps=CHECKPOINTS[:4]) -> str:
    """Markdown table of several seeds per setting: the runs of ``paths`` grouped by name
    without its ``_seed<N>`` suffix; per step, each seed's H MAE (in seed order) and the
    median."""
    groups: dict[str, dict[int, dict]] = {}
    for p in paths:
        with open(p) as f:
            c = json.load(f)
        name = c.get("name", os.path.splitext(os.path.basename(p))[0])
        base, sep, seed = name.rpartition("_seed")
        if not sep or not seed.isdigit():
            base, seed = name, c.get("config", {}).get("seed", 0)
        groups.setdefault(base, {})[int(seed)] = c
    steps = [s for s in steps if any(at_step(c["rows"], s) is not None
                                     for runs in groups.values() for c in runs.values())]
    lines = ["| setting (seeds) | " + " | ".join(f"step {s:,}" for s in steps) + " |",
             "|" + "---|" * (len(steps) + 1)]
    for base, runs in groups.items():
        cells = []
        for s in steps:
            vals = [v for v in (at_step(runs[k]["rows"], s) for k in sorted(runs))
                    if v is not None]
            cell = " / ".join(f"{v:,.0f}" for v in vals) or "-"
            if len(vals) > 1:
                cell += f" (median {statistics.median(vals):,.0f})"
            cells.append(cell)
        seeds = ", ".join(str(k) for k in sorted(runs))
        lines.append(f"| {base} ({seeds}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(paths: list[str], out: str, labels: list[str] | None = None) -> None:
    """Draws the curves of ``paths`` (H MAE vs steps and vs seconds) into ``out``, with
    ``labels`` as legend names (default: each run's name)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter
    if labels and len(labels) != len(paths):
        raise ValueError(f"--labels names {len(labels)} curves but {len(paths)} JSON files "
                         "were given: give one label per file, in the same order.")
    curves = {}
    for k, p in enumerate(paths):
        with open(p) as f:
            c = json.load(f)
        name = labels[k] if labels else c.get("name", os.path.splitext(os.path.basename(p))[0])
        curves[name] = c
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    for k, (name, c) in enumerate(curves.items()):
        color = f"C{k}"
        rows = c["rows"]
        ax1.plot([r["step"] for r in rows], [r["h_mae_uEh"] for r in rows], marker=".",
                 color=color, label=name)
        timed = [r for r in rows if r.get("seconds") is not None]  # a steps-only curve has none
        ax2.plot([max(r["seconds"], 1e-3) for r in timed], [r["h_mae_uEh"] for r in timed],
                 marker=".", color=color, label=name)
    for ax, xl in ((ax1, "training step"), (ax2, "training seconds (2-core CPU)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("validation H MAE (uEh)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(table(curves))
    print(f"wrote {out}")


def main(argv):
    """Trains one curve, or plots several with --plot."""
    if FLAGS.plot:
        plot(argv[1:], FLAGS.out, FLAGS.labels)
        return
    if FLAGS.seeds:
        print(seed_table(argv[1:]))
        return
    if FLAGS.config is None:
        raise app.UsageError("--config is required unless --plot")
    if FLAGS.threads:
        sys.path.insert(0, HERE)
        from step_time import pin_threads
        pin_threads(FLAGS.threads)
    t0 = time.time()
    result = run_curve(FLAGS.config, FLAGS.seconds, FLAGS.max_steps, FLAGS.eval_every,
                       FLAGS.log_every)
    result.update(name=FLAGS.name, config=FLAGS.config.to_dict(),
                  wall_seconds=round(time.time() - t0, 1),
                  command=" ".join(sys.argv))
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, f"{FLAGS.name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
