"""The benchmark suite's pieces: the issue's gridN molecules, the exponent fit, and one
step_time.py case end to end (the l_max sweep's train path, the cheapest OMol case)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import trainlib

BENCH = os.path.join(trainlib.ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import scaling  # noqa: E402
import step_time  # noqa: E402


@pytest.mark.parametrize("n, edges", [(60, 3540), (150, 21780)])
def test_grid_molecules_match_the_reference_table(n, edges):
    """gridN = ceil(N/9) ethanol copies 4 A apart; the edge counts at the OMol cutoff (12 A)
    are the ones of the PyTorch reference table."""
    from helm_jax import basis
    from helm_jax.data import graphs
    from helm_jax.data.records import Record
    z, pos = step_time.molecule(f"grid{n}")
    assert len(z) == n == len(pos)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(n, 1)]
    assert d.min() > 0.9  # no overlapping copies
    template = basis.make_template("HCNO", "def2-svp")
    g = graphs.build_graph(Record(elements=z, coords=pos), graphs.GraphSpec(template, 12.0),
                           with_labels=False)
    assert g.n_edge == edges


def test_fit_exponent_recovers_a_power_law():
    xs = [10, 20, 40, 80, 150]
    assert scaling.fit_exponent(xs, [3.0 * x ** 2.5 for x in xs]) == pytest.approx(2.5, abs=1e-3)
    assert scaling.fit_exponent([10], [1.0]) is None


@pytest.mark.slow
def test_step_time_train_case_prints_its_json():
    """OMol train step at l_max 2 (the template cut to s and p shells, all-occupied loss
    masks): one process, one JSON line with the case, the timings and the parameter count."""
    cmd = [sys.executable, os.path.join(BENCH, "step_time.py"), "--config=omol",
           "--molecule=ethanol", "--mode=train", "--l_max=2", "--steps=2", "--warmup=1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=trainlib.ROOT,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    r = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert (r["atoms"], r["edges"], r["template"]) == (9, 72, "7s6p")
    assert r["params"] == 9_539_207  # benchmarks/results/scaling_lmax.json, l_max 2
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    assert r["compile_s"] > 0 and r["peak_memory_gib"] > 0.1


@pytest.mark.slow
def test_learning_curve_harness_records_a_falling_validation_error(tmp_path):
    """benchmarks/learning_curve.py: the curve's rows are the Evaluator's full-H MAE at the
    scheduled steps, and a tiny model's validation error falls over 60 steps."""
    import learning_curve
    c = trainlib.tiny_config(trainlib.label_water(str(tmp_path / "water.h5")))
    c.data.split.update(train=6, val=2, test=0)
    c.data.split_order = "contiguous"
    c.optim.update(name="adam", learning_rate=3e-3, schedule="constant", clip_norm=0.0)
    result = learning_curve.run_curve(c, seconds=0, max_steps=60, eval_every=20)
    rows = result["rows"]
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert all(r["seconds"] > 0 and np.isfinite(r["h_mae_uEh"]) for r in rows)
    assert rows[-1]["h_mae_uEh"] < 0.7 * rows[0]["h_mae_uEh"]
    s = result["summary"]
    assert (s["steps"], s["n_train"], s["n_val"]) == (60, 6, 2)
    assert s["best_h_mae_uEh"] == min(r["h_mae_uEh"] for r in rows)
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"name": "a", **result}))
    learning_curve.plot([str(path)], str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    assert "| a | " in learning_curve.table({"a": result})
    learning_curve.plot([str(path)], str(tmp_path / "labelled.png"), ["mine"])
    with pytest.raises(ValueError, match="one label per file"):
        learning_curve.plot([str(path)], str(tmp_path / "x.png"), ["a", "b"])
    for seed, scale in ((0, 1.0), (1, 3.0)):  # two seeds of one setting
        rows = [dict(r, h_mae_uEh=r["h_mae_uEh"] * scale) for r in result["rows"]]
        (tmp_path / f"s_seed{seed}.json").write_text(json.dumps(
            {"name": f"s_seed{seed}", "rows": rows}))
    seeds = learning_curve.seed_table([str(tmp_path / f"s_seed{k}.json") for k in (0, 1)],
                                      steps=(20, 40, 60, 80))
    v = result["rows"][0]["h_mae_uEh"]
    assert f"| s (0, 1) | {v:,.0f} / {v * 3.0:,.0f} (median {(v + v * 3.0) / 2:,.0f}) |" in seeds
    assert "step 80" not in seeds  # steps no run reached are left out


def test_water_box_predict_times_every_stage_and_matches_the_predictor():
    """benchmarks/water_box_predict.py on 20 waters with the tiny model: the JSON has every
    stage and the box's sizes, and its stage-by-stage CSR is predict_hamiltonian's."""
    import water_box_predict
    args = water_box_predict.parse_args(["--molecules=20", "--tiny"])
    r, csr, predictor = water_box_predict.run(args)
    assert (r["atoms"], r["n_ao"], r["molecules"]) == (60, 480, 20)  # O 14 + 2 H x 5 AOs
    assert r["model"]["l_max"] == 4 and r["model"]["edge_chunk_size"] == 2048
    assert 0 < r["edges"] <= r["padded_edges"] and r["nnz"] == csr.nnz
    assert set(r["seconds"]) >= {"graph", "pad", "forward_first", "forward_second", "assembly"}
    assert all(v >= 0 for v in r["seconds"].values()) and r["peak_rss_gib_total"] > 0.1
    from helm_jax.data import water_box
    ref = predictor.predict_hamiltonian(water_box.water_box(20), sparse=True)
    assert (ref != csr).nnz == 0 and predictor.num_compilations == 1  # same program, same H
    json.dumps(r)
    out = water_box_predict.report(r)
    assert "9,999" not in out and "60 atoms" in out


def test_device_check_flags_and_an_empty_run_write_the_json(tmp_path, monkeypatch):
    """benchmarks/device_check.py: per-mode defaults, unknown parts refused, $OUT honoured,
    and the report written even when a part selects nothing (no JAX backend in the parent)."""
    import device_check
    full, quick = device_check.parse_args([]), device_check.parse_args(["--quick"])
    assert (full.train_steps, full.equivariance_model, full.train_variant) == (200, "omol", "")
    assert (quick.train_variant, quick.water_model) == ("small", "tiny")
    assert device_check.parse_args(["--quick", "--train_steps=3"]).train_steps == 3
    with pytest.raises(SystemExit):
        device_check.parse_args(["--parts=table,gpu"])
    monkeypatch.setenv("OUT", str(tmp_path))
    report = device_check.main(["--parts=table", "--table_cases=no such case"])
    on_disk = json.loads((tmp_path / "device_check.json").read_text())
    assert on_disk["parts"]["table"]["ok"] and on_disk["parts"]["table"]["cases"] == []
    assert report["meta"]["parts"] == ["table"] and on_disk["total_s"] >= 0
    assert device_check.summary(on_disk)["ok"] == {"table": True}


@pytest.mark.slow
def test_device_check_quick_runs_every_part(tmp_path):
    """The whole accelerator check in --quick mode at its smallest sizes, on CPU: every part
    succeeds and reports its numbers (about 4 min on a busy 2-core machine)."""
    water = trainlib.label_water(str(tmp_path / "water.h5"))
    out = tmp_path / "dc.json"
    cmd = [sys.executable, os.path.join(BENCH, "device_check.py"), "--quick", f"--out={out}",
           "--table_cases=md17 ethanol forward", "--table_steps=1",
           "--table_extra=--l_max=2 --warmup=1", f"--train_data={water}", "--train_steps=4",
           "--water_atoms=30,60"]
    subprocess.run(cmd, check=True, cwd=trainlib.ROOT, timeout=900,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    r = json.loads(out.read_text())
    p = r["parts"]
    assert all(p[k]["ok"] for k in ("labels", "table", "equivariance", "train", "water_box")), p
    assert p["labels"]["needed"] is False
    case = p["table"]["cases"][0]
    assert case["template"] == "3s2p" and case["median_ms"] > 0 and case["cpu_median_ms"] > 0
    eq = p["equivariance"]
    assert eq["l_max"] == 6 and set(eq["rotations"]) == {"random", "bond_on_polar_axis"}
    assert all(0 < v < 1e-4 for v in eq["max_rel_error"].values()), eq["max_rel_error"]
    t = p["train"]
    assert (t["first_step"], t["last_step"]) == (1, 4) and t["steps_per_s_after_compile"] > 0
    assert np.isfinite(t["first_loss"]) and np.isfinite(t["last_loss"])
    w = p["water_box"]
    assert [s["atoms"] for s in w["sizes"]] == [30, 60] and w["largest_ok_atoms"] == 60
    assert all(s["nnz"] > 0 and s["forward_second_s"] > 0 for s in w["sizes"])
    assert r["meta"]["device"]["backend"] == "cpu"


@pytest.mark.slow
def test_graph_parallel_benchmark_measures_memory_per_part(tmp_path):
    """benchmarks/graph_parallel.py on a 60-atom box, P = 1, 2: each row has per-device
    memory (lower on 2 parts), halo atoms on 2 parts, and the fitted exponents."""
    out = str(tmp_path / "gp.json")
    subprocess.run([sys.executable, os.path.join(BENCH, "graph_parallel.py"), "--atoms=60",
                    "--parts=1,2", "--repeats=1", "--no_train", "--channels=8",
                    f"--json={out}"], check=True, capture_output=True, cwd=trainlib.ROOT,
                   timeout=900)
    result = json.load(open(out))
    rows = {r["parts"]: r for r in result["rows"]}
    assert set(rows) == {1, 2} and rows[1]["atoms"] == rows[2]["atoms"] == 60
    mem = {p: r["forward_memory"]["device_bytes"] for p, r in rows.items()}
    assert 0 < mem[2] < mem[1]
    assert rows[2]["halo_atoms_mean"] > 0 and rows[2]["halo_bytes_sent"] >= rows[2][
        "halo_bytes_real"] > 0
    assert result["summary"]["memory_vs_parts"]["60"] < 0


@pytest.mark.slow
def test_step_window_probe_splits_the_evaluators_error_exactly(tmp_path):
    """benchmarks/step_window_probe.py: every split of the validation error covers each H
    entry once (shares sum to 1), the pooled MAE is the per-molecule MAE of equal-sized
    molecules (the Evaluator's h_mae), and Adam's second moments are positive."""
    import learning_curve
    import step_window_probe
    from helm_jax.evaluate import Evaluator
    c = trainlib.tiny_config(trainlib.label_water(str(tmp_path / "water.h5")))
    c.data.split.update(train=6, val=2, test=0)
    c.optim.update(name="adam", learning_rate=3e-3, schedule="constant", clip_norm=0.0)
    run = learning_curve.Trainer(c, 10)
    for _ in range(10):
        assert np.isfinite(run.train_step(run.next_batch()))
    b = step_window_probe.error_breakdown(run)
    for kind in ("distance", "shells", "magnitude"):
        assert sum(r["share_entries"] for r in b[kind]) == pytest.approx(1.0, abs=1e-12)
        assert sum(r["share_error"] for r in b[kind]) == pytest.approx(1.0, abs=1e-9)
    own = b["distance"][0]  # the atoms' own blocks (distance 0): O 14 AOs, H 5 + 5 of 24
    assert own["group"] == 0 and own["share_entries"] == pytest.approx((14 ** 2 + 2 * 5 ** 2)
                                                                        / 24 ** 2)
    m = Evaluator(run.model, run.data, c, run.ctx, run.weights, run.need, run.dtype)(
        run.state.params, "val")
    assert b["mae"] == pytest.approx(m["h_mae"], rel=1e-5)
    moments = step_window_probe.adam_moments(run.state, 10)
    assert 0 < moments["p10"] <= moments["p50"] <= moments["p99"]
