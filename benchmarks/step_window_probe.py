"""Probes of a training run at one step: Adam's second moments and where the H error sits.

    python benchmarks/step_window_probe.py --config=experiments/md17.py:ethanol,curve \\
        --config.data.path=labels/ethanol_train_pbe_svp_df.h5 --steps=400

Trains ``--config`` for ``--steps`` steps exactly as ``benchmarks/learning_curve.py`` does
(same data order, initialisation and optimiser, so its validation H MAE at that step is the
curve's), then prints

- the distribution of Adam's bias-corrected ``sqrt(nu)`` over every parameter, against
  Adam's ``eps`` (1e-8): a loss in small units could leave gradients below ``eps``, which
  would silently shrink the steps of those weights;
- the validation H error (full H, PySCF order) split by the distance between the two atoms
  of each entry, by the angular momenta of the two shells, and by the size of the entry
  ``|H_ij|``: the share of all entries, the share of the total absolute error and the MAE.

docs/learning_efficiency.md ("The step-400 window") reports its output.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

FLAGS = flags.FLAGS
DISTANCES = (0.0, 0.01, 1.2, 1.6, 2.6, 3.6, 5.0)  # A; [0, 0.01): the atom's own block
MAGNITUDES = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # Eh


def adam_moments(state, steps: int) -> dict:
    """Percentiles of the bias-corrected ``sqrt(nu)`` of the first Adam state in ``state``."""
    import jax
    found = []

    def visit(node):
        if hasattr(node, "nu") and hasattr(node, "mu"):
            found.append(node)
        elif isinstance(node, (tuple, list)):
            for x in node:
                visit(x)
    visit(jax.device_get(state.opt_state))
    if not found:
        raise ValueError("No Adam state (mu, nu) in the optimiser state: the probe needs "
                         "--config.optim.name=adam or adamw.")
    nu = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(found[0].nu)])
    root = np.sqrt(nu / (1.0 - 0.999 ** steps))
    out = {f"p{q}": float(np.percentile(root, q)) for q in (1, 10, 50, 90, 99)}
    out["below_eps"] = float(np.mean(root < 1e-8))
    out["below_10eps"] = float(np.mean(root < 1e-7))
    return out


def _ao_atoms_and_l(template, elements):
    atom, ls = [], []
    for a, z in enumerate(elements):
        for l in template.element(int(z)).shell_l:
            atom += [a] * (2 * l + 1)
            ls += [l] * (2 * l + 1)
    return np.asarray(atom), np.asarray(ls)


def error_breakdown(run) -> dict:
    """Validation H error of ``run``'s current parameters, split three ways (see the module
    doc); ``{"mae", "n", "distance": [...], "shells": [...], "magnitude": [...]}``."""
    import jax

    from helm_jax.data import datasets, pipeline
    from helm_jax.model import assemble, helm

    data, params = run.data, jax.device_get(run.state.params)
    it = pipeline.BatchIterator(data.graphs, data.splits["val"],
                                datasets.batch_config(run.config.data), n_devices=1,
                                shuffle=False, stats=data.stats, dtype=run.dtype, prefetch=0)
    groups: dict[tuple, list[float]] = {}

    def add(kind, key, mask, err, ref):
        acc = groups.setdefault((kind, key), [0.0, 0, 0.0])
        acc[0] += float(err[mask].sum())
        acc[1] += int(mask.sum())
        acc[2] += float(np.abs(ref[mask]).sum())

    total, count = 0.0, 0
    for bucket, per_dev in it.plan(0):
        batch = jax.tree.map(lambda x: x[0], it.make_batch(bucket, per_dev))
        out = jax.device_get(run.model.apply({"params": params}, **helm.batch_inputs(batch)))
        fulls = assemble.batch_to_full(out, batch, run.ctx.node_layout, run.ctx.edge_layout,
                                       data.stats)
        for k, i in enumerate(per_dev[0]):
            rec = data.reader[i]
            err = np.abs(fulls[k] - rec.fock)
            atom, ls = _ao_atoms_and_l(data.template, rec.elements)
            d = np.linalg.norm(rec.coords[atom][:, None] - rec.coords[atom][None], axis=-1)
            d_bin = np.digitize(d, DISTANCES[1:])
            m_bin = np.digitize(np.abs(rec.fock), MAGNITUDES[1:])
            for j in range(len(DISTANCES)):
                add("distance", j, d_bin == j, err, rec.fock)
            for j in range(len(MAGNITUDES)):
                add("magnitude", j, m_bin == j, err, rec.fock)
            for l1 in range(int(ls.max()) + 1):
                for l2 in range(l1, int(ls.max()) + 1):
                    mask = ((ls[:, None] == l1) & (ls[None] == l2)) | (
                        (ls[:, None] == l2) & (ls[None] == l1))
                    add("shells", (l1, l2), mask, err, rec.fock)
            total += float(err.sum())
            count += err.size
    result = {"mae": total / count, "n": count}
    for (kind, key), (e, n, ref) in sorted(groups.items(), key=lambda x: (x[0][0], x[0][1])):
        if n:
            result.setdefault(kind, []).append(
                {"group": key, "share_entries": n / count, "share_error": e / total,
                 "mae": e / n, "mean_abs_h": ref / n})
    return result


def _label(kind, key) -> str:
    if kind == "distance":
        hi = DISTANCES[key + 1] if key + 1 < len(DISTANCES) else None
        return f"{DISTANCES[key]:g}-{hi:g} A" if hi else f">= {DISTANCES[key]:g} A"
    if kind == "magnitude":
        hi = MAGNITUDES[key + 1] if key + 1 < len(MAGNITUDES) else None
        return f"{MAGNITUDES[key]:g}-{hi:g} Eh" if hi else f">= {MAGNITUDES[key]:g} Eh"
    return "l = {} / {}".format(*key)


def main(argv):
    del argv
    from learning_curve import Trainer
    run = Trainer(FLAGS.config, FLAGS.steps)
    for _ in range(FLAGS.steps):
        run.train_step(run.next_batch())
    m = adam_moments(run.state, FLAGS.steps)
    print(f"Adam sqrt(nu) after {FLAGS.steps} steps: " + ", ".join(
        f"{k} {v:.2e}" for k, v in m.items() if k.startswith("p")))
    print(f"  fraction below eps (1e-8): {m['below_eps']:.4f}; below 1e-7: "
          f"{m['below_10eps']:.4f}")
    b = error_breakdown(run)
    print(f"validation H MAE {b['mae'] * 1e6:,.0f} uEh over {b['n']:,} entries")
    print("| group | share of entries | share of |error| | MAE (uEh) | mean |H| (uEh) |")
    print("|---|---|---|---|---|")
    for kind in ("distance", "shells", "magnitude"):
        for r in b[kind]:
            print(f"| {_label(kind, r['group'])} | {r['share_entries']:.3f} | "
                  f"{r['share_error']:.3f} | {r['mae'] * 1e6:,.0f} | "
                  f"{r['mean_abs_h'] * 1e6:,.0f} |")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                    lock_config=True)
    flags.DEFINE_integer("steps", 400, "Training steps before the probes.")
    flags.mark_flags_as_required(["config"])
    app.run(main)
