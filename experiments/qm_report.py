"""The comparison table of the quantum-chemistry-target runs (experiments/qm_targets.py).

    python experiments/qm_report.py --runs=workdirs/qm_h_only,workdirs/qm_h_orbital_dipole,\
workdirs/qm_reduced_basis --out=workdirs/qm_report

Each run's best checkpoint is evaluated on its test split against both target sets: the
same-basis reference (PySCF def2-SVP) and the large-basis targets (def2-TZVP, from
``label.py --targets_basis``). A last row is the exact def2-SVP Fock matrix of the labels
against the large-basis targets: the basis-set error a reduced-basis model has to beat.
Errors: orbital energies (occupied + ``config.qm.n_virtual`` lowest virtual) and HOMO-LUMO
gap MAE in meV, dipole |mu - mu_ref| in mDebye, polarisability MAE over the nine components
in bohr^3 (atomic units), H MAE in uEh (same basis only). Writes ``qm_report.json`` and
``qm_report.md``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from helm_jax.units import HARTREE_MEV  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "Workdirs of experiments/qm_targets.py runs.")
flags.DEFINE_string("out", "workdirs/qm_report", "Output folder.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of each workdir.")
flags.mark_flags_as_required(["runs"])

AU_DEBYE = 2.541746473
TARGETS = ("reference", "large_basis")


def _run_data(config, workdir: str, targets: str):
    """A copy of a run's config with quantum-chemistry ``targets``, and its data (the run's
    statistics and splits)."""
    import copy

    from helm_jax import train
    config = copy.deepcopy(config)
    with config.unlocked():
        config.qm.update(enabled=True, targets=targets)
    return config, train.load_data(config, workdir)


def evaluate_run(loaded, workdir: str, targets: str) -> dict[str, float]:
    """Test-split metrics of a loaded checkpoint (``checkpoint.load_model``) of the run in
    ``workdir`` against ``targets`` (Eh / au)."""
    from helm_jax import train
    from helm_jax.evaluate import Evaluator
    dtype = train.precision(loaded.config)  # as the training run did (before tracing)
    config, data = _run_data(loaded.config, workdir, targets)
    model, weights, need, ctx = train.model_and_losses(config, data)
    evaluator = Evaluator(model, data, config, ctx, weights, need, dtype)
    return evaluator(loaded.params, "test")


def basis_error(config, workdir: str) -> dict[str, float]:
    """Exact same-basis labels (orbital energies, dipole, polarisability) against the
    large-basis targets on the test split of the run in ``workdir`` (config ``config``),
    in Eh / au."""
    import numpy as np
    config, data = _run_data(config, workdir, "large_basis")
    orb, gap, dip, pol = [], [], [], []
    for i in data.splits["test"]:
        ex = data.reader[int(i)].extras
        n_occ = data.graphs[int(i)].qm.n_occ
        n = min(n_occ + config.qm.n_virtual, len(ex["mo_energy"]), len(ex["targets_mo_energy"]))
        e, t = ex["mo_energy"], ex["targets_mo_energy"]
        orb.extend(np.abs(e[:n] - t[:n]))
        gap.append(abs((e[n_occ] - e[n_occ - 1]) - (t[n_occ] - t[n_occ - 1])))
        dip.append(np.linalg.norm(ex["dipole"] - ex["targets_dipole"]))
        pol.extend(np.abs(ex["polarizability"] - ex["targets_polarizability"]).ravel())
    return {"orbital_energy_mae": float(np.mean(orb)), "gap_mae": float(np.mean(gap)),
            "dipole_mae": float(np.mean(dip)), "polarizability_mae": float(np.mean(pol))}


def row(name: str, targets: str, m: dict) -> dict:
    """One table row in reporting units."""
    return {"model": name, "targets": targets,
            "h_mae_ueh": m["h_mae"] * 1e6 if "h_mae" in m and targets == "reference" else None,
            "orbital_energy_mae_mev": m["orbital_energy_mae"] * HARTREE_MEV,
            "gap_mae_mev": m["gap_mae"] * HARTREE_MEV,
            "dipole_mae_mdebye": m["dipole_mae"] * AU_DEBYE * 1e3,
            "polarizability_mae_au": m["polarizability_mae"]}


def markdown(rows: list[dict]) -> str:
    """The comparison table."""
    out = ["| model | targets | H MAE (uEh) | orbital energies (meV) | gap (meV) | "
           "dipole (mD) | polarisability (bohr^3) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        h = "-" if r["h_mae_ueh"] is None else f"{r['h_mae_ueh']:.0f}"
        out.append(f"| {r['model']} | {r['targets']} | {h} | "
                   f"{r['orbital_energy_mae_mev']:.1f} | {r['gap_mae_mev']:.1f} | "
                   f"{r['dipole_mae_mdebye']:.1f} | {r['polarizability_mae_au']:.3f} |")
    return "\n".join(out) + "\n"


def report(runs: list[str], out: str, which: str = "best") -> list[dict]:
    """Evaluates every run against both target sets; writes JSON and markdown."""
    from helm_jax import checkpoint
    rows, first = [], None
    for run in runs:
        loaded = checkpoint.load_model(run, which=which)
        first = first or loaded.config
        for targets in TARGETS:
            rows.append(row(loaded.config.name, targets, evaluate_run(loaded, run, targets)))
    rows.append(row("def2-SVP label H (exact)", "large_basis", basis_error(first, runs[0])))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "qm_report.json"), "w") as f:
        json.dump(rows, f, indent=1)
    table = markdown(rows)
    with open(os.path.join(out, "qm_report.md"), "w") as f:
        f.write(table)
    print(table)
    return rows


def main(argv):
    """Writes the report of --runs to --out."""
    del argv
    from absl import logging
    logging.set_verbosity(logging.ERROR)
    report(FLAGS.runs, FLAGS.out, FLAGS.which)


if __name__ == "__main__":
    app.run(main)
