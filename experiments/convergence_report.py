"""The learning curve of a long training run: validation H MAE against steps and CPU-hours.

    python experiments/convergence_report.py --workdir=workdirs/md17_ethanol_converge \\
        --out=docs/rmd17/convergence

Reads ``<workdir>/metrics.jsonl`` (its validation rows carry the step, the H MAE and the
run's cumulative wall and CPU seconds, which continue over resumes), fits a power law
``MAE = a * step^b`` to the best-so-far validation error from ``--fit_from`` steps on, and
says where the curve flattens: the first step s whose best-so-far error is less than
``--flat_gain`` (default 10 %) per doubling lower at 4 s (two doublings, so that one noisy
evaluation does not end the curve). Writes
``<out>/curve.png`` (log-log, against steps and CPU-hours, with the fit) and
``<out>/curve.json``; prints a Markdown table of the best-so-far error at doubling steps.

``--test_data=FILE`` adds the test curve: the H MAE on every structure of FILE (labels the
run never saw) of the kept ``checkpoints/latest`` steps at the table's doubling steps and
the last (their EMA parameters, as validated; keep them with
``--config.train.keep_checkpoints``, which the ``converge`` variant sets).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def load_val_rows(workdir: str) -> list[dict]:
    """Validation rows of ``<workdir>/metrics.jsonl`` in step order (a clear error if the
    log is missing or has none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: --workdir must be the workdir of "
                                "experiments/run.py.")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    val = sorted((r for r in rows if r["split"] == "val" and "h_mae" in r),
                 key=lambda r: r["step"])
    if not val:
        raise ValueError(f"{path} has no validation rows with h_mae yet: evaluate at least "
                         "once (train.eval_every).")
    return val


def best_so_far(values) -> np.ndarray:
    """Running minimum."""
    return np.minimum.accumulate(np.asarray(values, float))


def power_law(steps, mae, fit_from: int) -> dict | None:
    """Least-squares ``log MAE = log a + b log step`` over ``step >= fit_from``."""
    steps, mae = np.asarray(steps, float), np.asarray(mae, float)
    ok = (steps >= fit_from) & (mae > 0)
    if ok.sum() < 2:
        return None
    b, log_a = np.polyfit(np.log(steps[ok]), np.log(mae[ok]), 1)
    return {"a": float(np.exp(log_a)), "b": float(b), "from_step": int(fit_from),
            "points": int(ok.sum())}


def flattening_step(steps, best, gain: float) -> int | None:
    """First step s whose best-so-far error at step 4 s is above ``(1 - gain)^2`` times its
    value at s: less than ``gain`` per doubling over two doublings (None: not flattened
    within the run)."""
    steps, best = np.asarray(steps), np.asarray(best)
    for s, b in zip(steps, best):
        later = np.nonzero(steps >= 4 * s)[0]
        if not len(later):
            return None
        if best[later[0]] > (1.0 - gain) ** 2 * b:
            return int(s)
    return None


def report(workdir: str, fit_from: int, gain: float) -> dict:
    """The curve, its fit and the flattening point of one run (see the module doc)."""
    val = load_val_rows(workdir)
    steps = [r["step"] for r in val]
    mae = [r["h_mae"] * 1e6 for r in val]
    best = best_so_far(mae)
    cpu_h = [r.get("cpu_s", float("nan")) / 3600 for r in val]
    return {"steps": steps, "h_mae_uEh": mae, "best_uEh": best.tolist(), "cpu_hours": cpu_h,
            "wall_hours": [r.get("wall_s", float("nan")) / 3600 for r in val],
            "fit": power_law(steps, best, fit_from),
            "flattens_at_step": flattening_step(steps, best, gain)}


def doubling_rows(steps) -> list[int]:
    """Indices of the first evaluation at or after 1,000, 2,000, 4,000, ... steps, and of
    the last (each once)."""
    steps = np.asarray(steps)
    rows, mark = [], 1000
    while mark <= steps.max():
        rows.append(int(np.nonzero(steps >= mark)[0][0]))
        mark *= 2
    return list(dict.fromkeys(rows + [len(steps) - 1]))


def kept_steps(workdir: str) -> list[int]:
    """Steps of the kept ``checkpoints/latest`` checkpoints."""
    d = os.path.join(workdir, "checkpoints", "latest")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def test_curve(workdir: str, data: str, steps) -> dict:
    """Test H MAE (uEh, all structures of ``data``) of the kept latest checkpoints at the
    doubling steps of ``steps`` (validation steps); a clear error if none is kept."""
    from helm_jax import evaluate
    kept = set(kept_steps(workdir))
    wanted = [steps[i] for i in doubling_rows(steps) if steps[i] in kept]
    if not wanted:
        raise FileNotFoundError(
            f"{workdir}/checkpoints/latest keeps none of the steps {sorted(kept)[:5]}... "
            "at the curve's doubling steps: rerun with --config.train.keep_checkpoints large "
            "enough to keep every evaluated step, or drop --test_data.")
    mae = []
    for step in wanted:
        summary = evaluate.evaluate_checkpoint(
            os.path.join(workdir, "checkpoints", "latest", str(step)), split="all",
            data=data, energy=False, scf=False, progress=False)
        mae.append(summary["h_mae_ueh"])
    return {"data": os.path.abspath(data), "steps": wanted, "h_mae_uEh": mae,
            "n_structures": summary["n_molecules"]}


def table(rep: dict) -> str:
    """Markdown rows: best-so-far validation H MAE and CPU-hours at doubling steps (and the
    test H MAE where the report has a test curve)."""
    test = dict(zip(rep["test"]["steps"], rep["test"]["h_mae_uEh"])) if rep.get("test") else {}
    head = "| step | CPU-hours | validation H MAE (uEh) | best so far (uEh) |"
    lines = [head + (" test H MAE (uEh) |" if test else ""),
             "|---|---|---|---|" + ("---|" if test else "")]
    steps = rep["steps"]
    rows = doubling_rows(steps)
    for i in rows:
        last = " (last)" if i == rows[-1] else ""
        cell = (f" {test[steps[i]]:,.1f} |" if steps[i] in test else " |") if test else ""
        lines.append(f"| {steps[i]:,}{last} | {rep['cpu_hours'][i]:.2f} | "
                     f"{rep['h_mae_uEh'][i]:,.0f} | {rep['best_uEh'][i]:,.0f} |{cell}")
    return "\n".join(lines)


def plot(rep: dict, path: str) -> None:
    """Log-log curve against steps and CPU-hours, with the fitted power law."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    ax1.plot(rep["steps"], rep["h_mae_uEh"], ".", alpha=0.5, color="C0", label="validation")
    ax1.plot(rep["steps"], rep["best_uEh"], "-", color="C1", label="best so far")
    if rep["fit"]:
        f = rep["fit"]
        xs = np.geomspace(f["from_step"], max(rep["steps"]), 50)
        ax1.plot(xs, f["a"] * xs ** f["b"], "--", color="C2", label=f"fit: step^{f['b']:.2f}")
    ax2.plot(rep["cpu_hours"], rep["h_mae_uEh"], ".", alpha=0.5, color="C0")
    ax2.plot(rep["cpu_hours"], rep["best_uEh"], "-", color="C1")
    if rep.get("test"):
        t = rep["test"]
        hours = dict(zip(rep["steps"], rep["cpu_hours"]))
        label = f"test ({t['n_structures']} structures)"
        ax1.plot(t["steps"], t["h_mae_uEh"], "s-", ms=4, color="C3", label=label)
        ax2.plot([hours[s] for s in t["steps"]], t["h_mae_uEh"], "s-", ms=4, color="C3")
    for ax, xl in ((ax1, "training step"), (ax2, "CPU-hours (all threads)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("H MAE (uEh)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    rep = report(FLAGS.workdir, FLAGS.fit_from, FLAGS.flat_gain)
    if FLAGS.test_data:
        rep["test"] = test_curve(FLAGS.workdir, FLAGS.test_data, rep["steps"])
    out = FLAGS.out or FLAGS.workdir
    os.makedirs(out, exist_ok=True)
    plot(rep, os.path.join(out, "curve.png"))
    with open(os.path.join(out, "curve.json"), "w") as f:
        json.dump(rep, f, indent=1)
    print(table(rep))
    if rep["fit"]:
        print(f"power law from step {rep['fit']['from_step']:,}: MAE = "
              f"{rep['fit']['a']:.4g} * step^{rep['fit']['b']:.3f} ({rep['fit']['points']} "
              "evaluations)")
    flat = rep["flattens_at_step"]
    print(f"flattens at step {flat:,}" if flat else
          f"not flattened yet (doublings still gain >= {FLAGS.flat_gain:.0%} each)")
    print(f"wrote {out}/curve.png and curve.json")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Workdir of experiments/run.py.")
    flags.DEFINE_string("out", None, "Output folder (default: the workdir).")
    flags.DEFINE_integer("fit_from", 1000, "First step of the power-law fit.")
    flags.DEFINE_float("flat_gain", 0.10, "A doubling that gains less than this flattens.")
    flags.DEFINE_string("test_data", None, "Labelled file for the test curve (optional).")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
