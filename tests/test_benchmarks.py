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
