"""Training: losses by hand, data-parallel equivalence, resume, transfer protocols."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helm_jax import basis, losses, train
from helm_jax.data import batching, graphs
from helm_jax.data.records import Record
import trainlib


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    return trainlib.label_water(str(tmp_path_factory.mktemp("data") / "water_hf.h5"))


def test_losses_match_hand_computed_values():
    t = basis.make_template([1, 8], "def2-svp")
    spec = graphs.GraphSpec(t, 5.0)
    rng = np.random.default_rng(0)
    coords = np.array([[0, 0, 0.1], [0, 0.75, -0.47], [0, -0.75, -0.47]])
    z = np.array([8, 1, 1])
    fock = rng.normal(size=(24, 24))
    g = graphs.build_graph(Record(elements=z, coords=coords, fock=fock + fock.T, energy=-2.0,
                                  forces=rng.normal(size=(3, 3))), spec)
    b = batching.pad_batch([g], batching.Budget(5, 8, 3), spec.node_layout.dim,
                           spec.edge_layout.dim, np.float64)
    with jax.enable_x64(True):
        out = {"node_h": jnp.asarray(rng.normal(size=b.nodes["h"].shape)),
               "edge_h": jnp.asarray(rng.normal(size=b.edges["h"].shape)),
               "energy": jnp.asarray([-1.5, 7.0, 9.0]),
               "forces": jnp.asarray(rng.normal(size=(5, 3)))}
        mean = rng.normal(size=(119, spec.node_layout.muls[0]))
        std = rng.uniform(0.5, 2, size=(119, spec.node_layout.muls[0]))
        stats = type("S", (), {"node_mean": mean, "node_std": std})
        ctx = losses.LossContext.create(spec.node_layout, spec.edge_layout, stats)
        h = losses.hamiltonian(jax.tree.map(jnp.asarray, out), b, ctx)
        e = losses.energy(out, b, ctx)
        f = losses.forces(out, b, ctx)
        values = {k: float(p.combine(p.sums)) for k, p in
                  {"h": h, "e": e, "f": f}.items()}
    # By hand: loop over real atoms / edges and their valid components only.
    sq = []
    mul0 = spec.node_layout.muls[0]
    for i in range(3):
        valid = graphs.label_masks(z[i:i + 1], z[i:i + 1], spec.node_layout,
                                   graphs.slot_mask_table(t))[0]
        for k in np.nonzero(valid)[0]:
            y = b.nodes["h"][i, k]
            if k < mul0:
                y = (y - mean[z[i], k]) / std[z[i], k]
            sq.append((out["node_h"][i, k] - y) ** 2)
    for e_i in range(g.n_edge):
        s, r = g.senders[e_i], g.receivers[e_i]
        valid = graphs.label_masks(z[s:s + 1], z[r:r + 1], spec.edge_layout,
                                   graphs.slot_mask_table(t))[0]
        sq += list((out["edge_h"][e_i][valid] - b.edges["h"][e_i][valid]) ** 2)
    mse = np.mean(sq)
    assert values["h"] == pytest.approx(np.sqrt(mse) + mse, rel=1e-10)
    assert values["e"] == pytest.approx((-1.5 + 2.0) ** 2, rel=1e-12)
    fe = np.asarray(out["forces"])[:3] - g.forces
    assert values["f"] == pytest.approx(np.mean(fe ** 2), rel=1e-10)


DEVICE_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, {tests!r})
import jax, numpy as np
import trainlib
from helm_jax import losses, parallel, train
from helm_jax.data import datasets, pipeline
from helm_jax.model import helm
from helm_jax.train import TrainState, make_train_step, plateau_schedule
from helm_jax.optim import build_optimizer
c = trainlib.tiny_config({data!r})
data = train.load_data(c)
model = helm.build_model(c, data.template)
ctx = losses.LossContext.create(data.spec.node_layout, data.spec.edge_layout, data.stats)
mols = [0, 1, 2, 3]
budget = pipeline.BatchIterator(data.graphs, mols, datasets.batch_config(c.data)).budgets[0]
big = __import__("helm_jax.data.batching", fromlist=["x"]).Budget(
    budget.n_node * 2, budget.n_edge * 2, budget.n_graph * 2)
gs = [data.graphs[i] for i in mols]
from helm_jax.data import batching
for n_dev in (1, 2):  # one process: the 1-device mesh is the first of the 2 devices
    parts = [gs[:2], gs[2:]] if n_dev == 2 else [gs]
    batch = batching.stack_device_batches([batching.pad_batch(
        p, big, data.spec.node_layout.dim, data.spec.edge_layout.dim) for p in parts])
    mesh = parallel.make_mesh(n_dev)
    params = model.init(jax.random.PRNGKey(0),
                        **helm.batch_inputs(jax.tree.map(lambda x: x[0], batch)))["params"]
    tx = build_optimizer(c.optim, 10, "none", params)
    step = parallel.data_parallel(make_train_step(model, tx, ctx, {{"hamiltonian": 1.0}},
                                                  {{"hamiltonian"}}), mesh)
    state = TrainState.create(params, tx, plateau_schedule(c.optim), 0)
    s, m = step(parallel.replicate(state, mesh), parallel.shard(batch, mesh))
    p = s.params
    np.savez(os.path.join({out!r}, f"p{{n_dev}}.npz"), loss=np.asarray(m["loss"]),
             **{{str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(p))}})
"""


def test_clip_by_global_norm_matches_optax():
    from helm_jax import optim
    rng = np.random.default_rng(1)
    grads = {"a": jnp.asarray(rng.normal(size=(7, 5))), "b": [jnp.asarray(rng.normal(size=3))]}
    norm = float(np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads))))
    for max_norm in (0.5 * norm, 2.0 * norm):  # clipped, untouched
        ours, _ = optim.clip_by_global_norm(max_norm).update(grads, ())
        ref, _ = optax.clip_by_global_norm(max_norm).update(grads, ())
        for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=0)
        clipped = float(np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(ours))))
        assert abs(clipped - min(norm, max_norm)) < 1e-5 * norm


@pytest.mark.slow
def test_two_devices_equal_one_device(water, tmp_path):
    script = DEVICE_SCRIPT.format(tests=os.path.dirname(__file__), data=water, out=str(tmp_path))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=trainlib.ROOT,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    one, two = (np.load(tmp_path / f"p{n}.npz") for n in (1, 2))
    assert float(one["loss"]) == pytest.approx(float(two["loss"]), rel=1e-6)
    diffs = [np.abs(one[k] - two[k]).max() for k in one.files if k != "loss"]
    # The first Adam step moves every weight by g / (|g| + 1e-8) * lr, lr = 1e-3: a wrong
    # reduction differs by ~1e-3. Where |g| is near Adam's eps the round-off of the summation
    # order is amplified: 3e-8 on JAX 0.10, 1.2e-6 on JAX 0.12 (JAX_DISABLE_MOST_OPTIMIZATIONS).
    assert len(diffs) > 10 and max(diffs) < 1e-5


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"train"' in line]


@pytest.mark.slow
def test_resume_reproduces_the_straight_run(water, tmp_path):
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    train.train_and_evaluate(trainlib.tiny_config(water, steps=6), straight)
    train.train_and_evaluate(trainlib.tiny_config(water, steps=3), resumed)
    train.train_and_evaluate(trainlib.tiny_config(water, steps=6), resumed)
    a, b = _metrics(straight), _metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-6)
    assert trainlib.max_diff(trainlib.final_params(straight),
                             trainlib.final_params(resumed)) < 1e-6


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes(water, tmp_path):
    workdir = str(tmp_path / "w")
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import trainlib;"
              f"from helm_jax import train; c = trainlib.tiny_config({water!r}, steps=100000);"
              f"train.train_and_evaluate(c, {workdir!r})")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=trainlib.ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(path) and len(_metrics(workdir)) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "SIGTERM: saved step" in output
    saved = trainlib.final_params(workdir)
    step = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", "latest")))
    assert step >= 3
    result = train.train_and_evaluate(trainlib.tiny_config(water, steps=step + 2), workdir)
    assert result["step"] == step + 2
    assert trainlib.max_diff(saved, trainlib.final_params(workdir)) > 0


@pytest.mark.slow
def test_transfer_frozen_keeps_backbone_and_finetune_changes_it(water, tmp_path):
    pre = str(tmp_path / "pre")
    train.train_and_evaluate(trainlib.tiny_config(water, steps=3), pre)
    backbone = trainlib.final_params(pre)["backbone"]
    for protocol in ("frozen", "finetune"):
        c = trainlib.tiny_config(water, steps=3)
        c.losses.update(hamiltonian=0.0, energy=1.0, forces=0.1)
        c.transfer.update(protocol=protocol, init_from=pre)
        c.optim.backbone_lr_scale = 0.1
        wd = str(tmp_path / protocol)
        train.train_and_evaluate(c, wd)
        after = trainlib.final_params(wd)
        diff = trainlib.max_diff(backbone, after["backbone"])
        if protocol == "frozen":
            assert diff == 0.0  # bit-identical
        else:
            assert diff > 0.0


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message(water, tmp_path):
    c = trainlib.tiny_config(water, steps=3)
    c.optim.update(learning_rate=1e30, clip_norm=0.0)
    with pytest.raises(FloatingPointError, match="Non-finite loss or gradient"):
        train.train_and_evaluate(c, str(tmp_path / "nan"))


@pytest.mark.slow
def test_a_fork_adds_a_loss_by_name(water, tmp_path):
    c = trainlib.tiny_config(water, steps=2)
    c.loss_modules = ("forklib",)
    c.losses.offdiag_l1 = 0.5
    train.train_and_evaluate(c, str(tmp_path))
    rows = _metrics(str(tmp_path))
    assert all(r["offdiag_l1"] > 0 for r in rows)
    for r in rows:  # the total is the weighted sum of the named losses
        assert r["loss"] == pytest.approx(r["hamiltonian"] + 0.5 * r["offdiag_l1"], rel=1e-5)
    with pytest.raises(ValueError, match="Unknown loss 'nonexistent': registered are .*"
                                         "'force_l1'.*'hamiltonian'"):
        losses.resolve("nonexistent", ("forklib",))


@pytest.mark.slow
def test_a_fork_loss_that_needs_forces_gets_them(water, tmp_path):
    c = trainlib.tiny_config(water, steps=2)
    c.loss_modules = ("forklib",)
    c.losses.force_l1 = 2.0  # neither "energy" nor "forces" is weighted: only the fork asks
    assert losses.needs({"hamiltonian": 1.0, "force_l1": 2.0}, ("forklib",)) == {
        "hamiltonian", "energy", "forces"}
    train.train_and_evaluate(c, str(tmp_path))
    rows = [r for r in _metrics(str(tmp_path)) if "force_l1" in r]
    assert rows and all(0 < r["force_l1"] < 10 for r in rows)  # Eh/A, finite and real
    for r in rows:
        assert r["loss"] == pytest.approx(r["hamiltonian"] + 2.0 * r["force_l1"], rel=1e-5)


def test_loss_registry_rejects_clashes_and_unknown_outputs():
    with pytest.raises(ValueError, match="already registered"):
        losses.register("hamiltonian", needs=("hamiltonian",))(lambda out, batch, ctx: None)
    with pytest.raises(ValueError, match="unknown outputs \\['dipoles'\\]"):
        losses.register("x", needs=("dipoles",))


PROCESS_SCRIPT = r"""
import os, sys
sys.path.insert(0, {tests!r})
import jax
if {nproc} > 1:
    jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes={nproc},
                               process_id=int(sys.argv[1]))
import trainlib
from helm_jax import train
c = trainlib.tiny_config({data!r}, steps=3)
train.train_and_evaluate(c, {workdir!r})
"""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_two_devices(water, tmp_path):
    """Multi-host data parallelism: 2 processes x 1 CPU device (jax.distributed, Gloo)
    train exactly as 1 process x 2 devices; only process 0 writes logs."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    tests = os.path.dirname(__file__)
    one = str(tmp_path / "one")
    script = PROCESS_SCRIPT.format(tests=tests, nproc=1, port=0, data=water, workdir=one)
    subprocess.run([sys.executable, "-c", script, "0"], check=True, cwd=trainlib.ROOT,
                   env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    two = str(tmp_path / "two")
    script = PROCESS_SCRIPT.format(tests=tests, nproc=2, port=_free_port(), data=water,
                                   workdir=two)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=trainlib.ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert trainlib.max_diff(trainlib.final_params(one), trainlib.final_params(two)) < 1e-6
    assert len(_metrics(two)) == len(_metrics(one)) == 3  # written once, not once per process
    assert "step 3/3" in outs[0] and "step 3/3" not in outs[1]


def _tiny_step(water, ema_decay=0.0):
    """A jitted one-device train step of the tiny config and its initial state and batch."""
    from helm_jax import parallel
    from helm_jax.data import datasets, pipeline
    from helm_jax.optim import build_optimizer
    c = trainlib.tiny_config(water)
    data = train.load_data(c)
    model, weights, need, ctx = train.model_and_losses(c, data)
    it = pipeline.BatchIterator(data.graphs, data.splits["train"],
                                datasets.batch_config(c.data), prefetch=0)
    batch = it.make_batch(*it.plan(0)[0])
    params = train._init_params(model, batch, 0)
    tx = build_optimizer(c.optim, 10, "none", params)
    mesh = parallel.make_mesh(1)
    step = parallel.data_parallel(train.make_train_step(model, tx, ctx, weights, need,
                                                        ema_decay=ema_decay), mesh)
    state = train.TrainState.create(params, tx, train.plateau_schedule(c.optim), 0,
                                    ema=ema_decay > 0)
    return step, parallel.replicate(state, mesh), parallel.shard(batch, mesh)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_betas_from_the_config(name):
    """``optim.beta1`` / ``beta2`` are Adam's moment decays: after two steps the updates
    equal optax's with the same betas and differ from the default ones."""
    from helm_jax.configs import base
    from helm_jax.optim import build_optimizer
    c = base.get_config().optim
    c.update(name=name, schedule="constant", clip_norm=0.0, beta1=0.5, beta2=0.9)
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)} for _ in range(2)]

    def run(tx):
        state = tx.init(params)
        for g in grads:
            upd, state = tx.update(g, state, params)
        return np.asarray(upd["w"])

    ours = run(build_optimizer(c, 10, "none", params))
    kw = dict(weight_decay=c.weight_decay) if name == "adamw" else {}
    ref = getattr(optax, name)(c.learning_rate, b1=0.5, b2=0.9, **kw)
    default = getattr(optax, name)(c.learning_rate, **kw)
    np.testing.assert_allclose(ours, run(ref), rtol=1e-6, atol=0)
    assert np.max(np.abs(ours - run(default))) > 1e-2 * c.learning_rate


@pytest.mark.slow
def test_train_state_lr_scale_and_ema(water):
    """TrainState: the plateau's lr_scale is an input of the step (0 freezes every
    parameter bit for bit), and the EMA follows ema <- d ema + (1 - d) params."""
    step, s0, batch = _tiny_step(water, ema_decay=0.75)
    frozen, _ = step(s0.replace(lr_scale=jnp.zeros_like(s0.lr_scale)), batch)
    for a, b in zip(jax.tree.leaves(frozen.params), jax.tree.leaves(s0.params)):
        np.testing.assert_array_equal(a, b)
    s1, _ = step(s0, batch)
    s2, _ = step(s1, batch)
    assert int(s2.step) == 2 and not np.array_equal(s1.rng, s2.rng)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree.leaves(s2.params), jax.tree.leaves(s0.params)))
    assert moved > 1e-4
    for p0, p1, p2, e2 in zip(*(jax.tree.leaves(x) for x in
                                (s0.params, s1.params, s2.params, s2.ema))):
        want = 0.75 * (0.75 * p0 + 0.25 * p1) + 0.25 * p2
        np.testing.assert_allclose(e2, want, rtol=1e-6, atol=1e-7)


def test_plateau_schedule_halves_after_patience_evaluations():
    c = trainlib.tiny_config("unused")
    c.optim.update(plateau_factor=0.5, plateau_patience=2, plateau_rtol=1e-4)
    tx = train.plateau_schedule(c.optim)
    state = tx.init({"w": jnp.zeros(3)})
    scales = []
    for value in (1.0, 0.5, 0.5, float("nan"), 0.2, 0.3, 0.3):  # NaN counts as no gain
        _, state = tx.update({}, state, value=value)
        scales.append(float(state.scale))
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


@pytest.mark.slow
def test_early_stopping_stops_and_a_rerun_stays_stopped(water, tmp_path):
    """A learning rate of 0 never improves on the first validation: with patience 2 and an
    evaluation every step the run stops at step 3 of 50, and rerunning it trains nothing."""
    workdir = str(tmp_path / "w")
    c = trainlib.tiny_config(water, steps=50)
    c.optim.update(name="adam", learning_rate=0.0, schedule="constant", clip_norm=0.0)
    c.train.update(eval_every=1, early_stop_patience=2)
    assert train.train_and_evaluate(c, workdir)["step"] == 3
    assert train.train_and_evaluate(c, workdir)["step"] == 3
