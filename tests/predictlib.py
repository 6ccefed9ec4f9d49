"""A tiny untrained checkpoint on the labelled water fixture, saved the way training saves it.

Training a model even for one step compiles the train step and the evaluator (about a
minute on a loaded 2-core machine); the inference and evaluation tests only need a real
checkpoint (config, template, statistics, params, ``splits.json``), so the parameters are
the initial ones. :func:`shared_checkpoint` makes it once per test session, shared by the
pytest-xdist workers and test files.
"""

import fcntl
import os

import jax

import trainlib
from helm_jax import checkpoint, train
from helm_jax.data import batching
from helm_jax.model import helm


def tiny_checkpoint(workdir: str, data_path: str) -> str:
    """Writes ``workdir`` (statistics, splits, best and latest checkpoints); returns it.

    The config names energy and force losses, so the checkpoint counts as having an energy
    head (``Predictor.has_energy_head``).
    """
    c = trainlib.tiny_config(data_path)
    c.losses.update(energy=1.0, forces=1.0)
    data = train.load_data(c, workdir)  # writes statistics.json and splits.json
    model = helm.build_model(c, data.template, data.stats)
    g = data.graphs[0]
    batch = batching.pad_batch([g], batching.Budget(g.n_node + 1, g.n_edge, 2), None, None)
    init = jax.jit(model.init, static_argnames="num_graphs")  # eager init is 3x slower
    params = init(jax.random.PRNGKey(0), **helm.batch_inputs(batch))["params"]
    meta = checkpoint.make_meta(c, data.template, data.stats, step=0)
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(0, params, {"step": 0}, meta)
    ckpt.save_best(0, params, {"step": 0}, meta, val_loss=0.0)
    ckpt.close()
    return workdir


def shared_checkpoint(tmp_path_factory) -> tuple[str, str]:
    """``(water labels, checkpoint workdir)``, created once per session (file lock)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, common to all workers
    root = root / "shared_water_checkpoint"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        water = trainlib.label_water(str(root / "water_hf.h5"))
        workdir = str(root / "run")
        if not os.path.exists(os.path.join(workdir, "done")):
            tiny_checkpoint(workdir, water)
            open(os.path.join(workdir, "done"), "w").close()
    return water, workdir
