"""The training log's clocks: wall and CPU seconds accumulate over resumes."""

import json
import os
import time

import numpy as np

from helm_jax.metrics_logger import MetricsLogger


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    x = np.ones(1000)
    while time.process_time() < end:
        x = np.sqrt(x + 1.0)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_wall_and_cpu_seconds_continue_across_a_resume(tmp_path):
    workdir = str(tmp_path)
    log = MetricsLogger(workdir, num_steps=10)
    _busy(0.3)
    log.write(1, "train", {"loss": 1.0})
    _busy(0.3)
    log.write(2, "train", {"loss": 0.5})
    log.write(3, "train", {"loss": 0.4})  # the resume below restarts after step 2
    first = _rows(workdir)
    assert 0.25 <= first[0]["cpu_s"] <= first[1]["cpu_s"] - 0.25
    assert first[0]["wall_s"] >= 0.25 and first[1]["wall_s"] >= first[0]["wall_s"] + 0.25

    time.sleep(2.0)  # between processes: counted by neither clock
    resumed = MetricsLogger(workdir, num_steps=10, start_step=2)
    assert [r["step"] for r in resumed.history] == [1, 2]  # step 3 is redone
    _busy(0.3)
    resumed.write(3, "val", {"loss": 0.3})
    rows = _rows(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    gap_cpu = rows[2]["cpu_s"] - rows[1]["cpu_s"]
    gap_wall = rows[2]["wall_s"] - rows[1]["wall_s"]
    assert 0.25 <= gap_cpu < 1.0 and 0.25 <= gap_wall < 1.5  # not the 2 s pause


def test_early_stopping_counts_evaluations_since_the_best_from_the_log(tmp_path):
    from helm_jax.train import evaluations_since_best
    workdir = str(tmp_path)
    log = MetricsLogger(workdir, num_steps=100)
    for step, loss in ((10, 5.0), (20, 3.0), (30, 4.0), (40, 3.5)):
        log.write(step, "train", {"loss": 0.1})  # training rows do not count
        log.write(step, "val", {"loss": loss})
    assert evaluations_since_best(log.history) == 2  # best at step 20
    # A resume from step 30 drops step 40's row and continues the count from the log.
    assert evaluations_since_best(MetricsLogger(workdir, 100, start_step=30).history) == 1
    assert evaluations_since_best([]) == 0
    log.write(50, "val", {"loss": 2.0})
    assert evaluations_since_best(log.history) == 0
