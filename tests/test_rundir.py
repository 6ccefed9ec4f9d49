"""One run per workdir (the lock), and resumed runs that keep their settings."""

import json
import os
import subprocess
import signal
import sys
import textwrap
import time

import numpy as np
import pytest
import trainlib

from helm_jax import rundir, train


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    return trainlib.label_water(str(tmp_path_factory.mktemp("data") / "water_hf.h5"))


def test_a_second_holder_is_refused_and_the_lock_is_released(tmp_path):
    lock = tmp_path / rundir.LOCK_NAME
    with rundir.RunLock(str(tmp_path)):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(rundir.WorkdirInUseError,
                           match=f"in use by another training run \\(PID {os.getpid()} on "
                                 "host .*another --workdir"):
            with rundir.RunLock(str(tmp_path)):
                pass
    assert lock.read_text() == ""  # released cleanly
    with rundir.RunLock(str(tmp_path)):  # and free again
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
        from helm_jax import rundir
        lock = rundir.RunLock({str(tmp_path)!r}).__enter__()
        os.kill(os.getpid(), 9)  # dies holding the lock, as after kill -9
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    dead = json.loads((tmp_path / rundir.LOCK_NAME).read_text())
    assert dead["pid"] != os.getpid()
    with rundir.RunLock(str(tmp_path)):
        assert json.loads((tmp_path / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in capsys.readouterr().out


def test_training_refuses_a_workdir_in_use(water, tmp_path):
    workdir = str(tmp_path / "run")
    with rundir.RunLock(workdir):
        with pytest.raises(rundir.WorkdirInUseError, match="in use by another training run"):
            train.train_and_evaluate(trainlib.tiny_config(water, steps=1), workdir)


def test_config_changes_ignore_harmless_fields():
    c = trainlib.tiny_config("x.h5", steps=4)
    saved = json.loads(c.to_json_best_effort())
    c.train.update(num_steps=10, log_every=5, eval_every=7)
    c.data.prefetch = 2
    assert rundir.config_changes(saved, c) == {}
    del saved["train"]["allow_config_change"]  # a checkpoint from before the field existed
    assert rundir.config_changes(saved, c) == {}
    c.optim.learning_rate = 5e-4
    c.seed = 3
    assert rundir.config_changes(saved, c) == {"optim.learning_rate": (1e-3, 5e-4),
                                               "seed": (0, 3)}
    c2 = trainlib.tiny_config("x.h5", steps=4)
    c2.optim.schedule = "cosine"  # the step budget sets the schedule's length
    saved2 = json.loads(c2.to_json_best_effort())
    c2.train.num_steps = 8
    assert rundir.config_changes(saved2, c2) == {"train.num_steps": (4, 8)}


def test_config_changes_legacy_and_initialisation_only_fields():
    """A checkpoint written before a field existed compares at its LEGACY value: the
    radial basis width and Adam's betas (which change results) count as changes when the
    new default differs; fields that only shape the initial parameters never do."""
    c = trainlib.tiny_config("x.h5", steps=4)
    saved = json.loads(c.to_json_best_effort())
    for key in ("rbf_width", "edge_embedding_std", "init_scale"):
        del saved["model"][key]
    del saved["optim"]["beta2"]
    c.model.update(rbf_width=1.0, edge_embedding_std=1e-3, init_scale=1 / 3)
    c.optim.beta2 = 0.999
    assert rundir.config_changes(saved, c) == {}
    c.model.rbf_width, c.optim.beta2 = 0.5, 0.99
    assert rundir.config_changes(saved, c) == {"model.rbf_width": (1.0, 0.5),
                                               "optim.beta2": (0.999, 0.99)}


@pytest.mark.slow
def test_resume_refuses_changed_settings_unless_allowed(water, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(trainlib.tiny_config(water, steps=2), workdir)
    longer = trainlib.tiny_config(water, steps=3)  # a longer budget is harmless
    assert train.train_and_evaluate(longer, workdir)["step"] == 3
    other = trainlib.tiny_config(water, steps=4)
    other.optim.learning_rate = 3e-3
    with pytest.raises(ValueError, match=r"(?s)optim.learning_rate: 0.001 in the checkpoint, "
                                         r"0.003 now.*allow_config_change=True"):
        train.train_and_evaluate(other, workdir)
    other.train.allow_config_change = True
    assert train.train_and_evaluate(other, workdir)["step"] == 4


def test_budgets_are_planned_anew_for_other_batch_settings_or_data(water, tmp_path):
    workdir = str(tmp_path)

    def budgets(c):
        b = train._stored_budgets(c, train.load_data(c, workdir), workdir).budgets
        return b, json.loads((tmp_path / "budgets.json").read_text())

    c = trainlib.tiny_config(water)
    first, stored = budgets(c)
    assert stored["budgets"] == first and stored["batch"]["molecules_per_batch"] == 2
    assert budgets(c)[0] == first  # reused
    c.data.batch.molecules_per_batch = 3  # fixing a batch flag takes effect
    assert budgets(c)[0][0]["n_graph"] == 4
    c.model.cutoff = 1.2  # fewer edges (no H-H pairs): a new scan, new budgets
    small, stored = budgets(c)
    assert stored["scan"]["edges"] == [4, 4] and small[0]["n_edge"] == 3 * 4


@pytest.mark.slow
def test_non_finite_loss_names_the_checkpoint_and_the_cause(water, tmp_path):
    c = trainlib.tiny_config(water, steps=3)
    c.optim.update(learning_rate=1e30, clip_norm=0.0)
    with pytest.raises(FloatingPointError,
                       match="Non-finite loss or gradient at step .*optimisation diverged.*no checkpoint was saved"):
        train.train_and_evaluate(c, str(tmp_path / "nan"))


def test_an_energy_loss_without_energy_labels_stops_before_the_first_step(tmp_path):
    c = trainlib.tiny_config(trainlib.WATER_XYZ)  # geometries only: no H, no energies
    c.losses.update(hamiltonian=0.0, energy=1.0)
    with pytest.raises(ValueError, match=r"config.losses.energy=1.0 but none of the 5 "
                                         r"training structures .* has an energy"):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_sigkill_at_five_random_moments_loses_nothing(water, tmp_path):
    """Chaos: a run killed with SIGKILL five times and resumed each time ends with the
    parameters and the metric rows of an uninterrupted run."""
    steps = 16

    def config():
        c = trainlib.tiny_config(water, steps=steps)
        c.train.update(checkpoint_every=2, eval_every=8)
        return c

    straight = str(tmp_path / "straight")
    train.train_and_evaluate(config(), straight)
    chaos = str(tmp_path / "chaos")
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import trainlib;"
              f"from helm_jax import train; c = trainlib.tiny_config({water!r}, steps={steps});"
              "c.train.update(checkpoint_every=2, eval_every=8);"
              f"train.train_and_evaluate(c, {chaos!r})")
    rng = np.random.default_rng(0)
    targets = sorted(rng.choice(np.arange(2, steps), size=5, replace=False).tolist())
    path = os.path.join(chaos, "metrics.jsonl")
    for target in targets:  # kill once the run has logged `target` steps, plus a random delay
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=trainlib.ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if os.path.exists(path) and len(_train_rows(chaos)) >= target:
                time.sleep(float(rng.uniform(0.0, 0.3)))  # maybe mid-checkpoint
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = train.train_and_evaluate(config(), chaos)  # resumes (or finds it finished)
    assert result["step"] == steps
    assert trainlib.max_diff(trainlib.final_params(straight),
                             trainlib.final_params(chaos)) < 1e-6
    assert [r["step"] for r in _train_rows(chaos)] == list(range(1, steps + 1))  # once each


def _train_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"train"' in line]
