"""experiments/convergence_report.py on a synthetic training log."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
import convergence_report  # noqa: E402


def _log(workdir, steps, mae):
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for s, m in zip(steps, mae):
            f.write(json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n")
            f.write(json.dumps({"step": s, "split": "val", "loss": 1.0, "h_mae": m * 1e-6,
                                "wall_s": s * 0.2, "cpu_s": s * 0.35}) + "\n")


def test_power_law_flattening_table_and_figure(tmp_path):
    steps = np.arange(1000, 64001, 1000)
    # step^-0.5 up to 16,000 steps, then flat at that level
    mae = 30_000 * np.minimum(steps, 16_000) ** -0.5
    _log(str(tmp_path), steps.tolist(), mae.tolist())
    rep = convergence_report.report(str(tmp_path), fit_from=1000, gain=0.10)
    # a doubling of a step^-0.5 law gains 29 %; from 11,000 to 44,000 only 17 % in all
    assert rep["flattens_at_step"] == 11_000
    pure = convergence_report.power_law(steps[:16], mae[:16], 1000)
    assert pure["b"] == pytest.approx(-0.5, abs=1e-9)
    assert pure["a"] == pytest.approx(30_000, rel=1e-9)
    assert rep["cpu_hours"][-1] == pytest.approx(64_000 * 0.35 / 3600)
    text = convergence_report.table(rep)
    assert "| 1,000 | 0.10 | 949 | 949 |" in text and "(last)" in text
    convergence_report.plot(rep, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_still_improving_run_has_no_flattening_and_noise_uses_the_best(tmp_path):
    steps = [1000, 2000, 3000, 4000, 8000]
    mae = [1000.0, 1300.0, 700.0, 650.0, 400.0]  # a noisy evaluation at 2,000
    _log(str(tmp_path), steps, mae)
    rep = convergence_report.report(str(tmp_path), fit_from=1000, gain=0.10)
    assert rep["best_uEh"] == pytest.approx([1000.0, 1000.0, 700.0, 650.0, 400.0])
    assert rep["flattens_at_step"] is None


def test_missing_log_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="workdir of experiments/run.py"):
        convergence_report.report(str(tmp_path), 1000, 0.1)


def test_test_curve_evaluates_the_kept_ema_checkpoints(tmp_path, tmp_path_factory):
    """--test_data: the H MAE of each kept latest checkpoint's EMA parameters on every
    structure of the file, against the MAE computed here from the Predictor and the labels."""
    import jax

    import predictlib
    from helm_jax import checkpoint, predict
    from helm_jax.data import readers

    water, run = predictlib.shared_checkpoint(tmp_path_factory)
    loaded = checkpoint.load_model(run)
    workdir = str(tmp_path)
    emas = {1000: loaded.params, 2000: jax.tree.map(lambda x: np.asarray(x) * 0.5, loaded.params),
            3000: jax.tree.map(lambda x: np.asarray(x) * 0.25, loaded.params)}
    with checkpoint.Checkpointer(workdir, keep=5) as ckpt:
        for step, ema in emas.items():
            ckpt.save(step, loaded.params, {"step": step, "ema": ema}, loaded.meta)
    steps = [1000, 2000, 3000]
    _log(workdir, steps, [900.0, 800.0, 700.0])
    curve = convergence_report.test_curve(workdir, water, steps)
    reader = readers.open_dataset(water)
    records = [reader[i] for i in range(len(reader))]
    assert curve["steps"] == steps and curve["n_structures"] == len(records)
    for step, got in zip(steps, curve["h_mae_uEh"]):
        loaded.params = emas[step]
        preds = predict.Predictor(loaded).predict_hamiltonian(records)
        want = np.mean([np.abs(p - r.fock).mean() for p, r in zip(preds, records)]) * 1e6
        assert got == pytest.approx(want, rel=1e-5)
    assert len(set(curve["h_mae_uEh"])) == 3
    rep = convergence_report.report(workdir, fit_from=1000, gain=0.1)
    rep["test"] = curve
    assert f"| 3,000 (last) | 0.29 | 700 | 700 | {curve['h_mae_uEh'][2]:,.1f} |" in \
        convergence_report.table(rep)
    convergence_report.plot(rep, str(tmp_path / "c.png"))
    with pytest.raises(FileNotFoundError, match="keep_checkpoints"):
        convergence_report.test_curve(workdir, water, [4000, 8000])
