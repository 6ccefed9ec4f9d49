"""One-command accelerator check: step times, equivariance, training and the largest water box.

    bash benchmarks/device_check.sh                  # the whole check, ~8 min on one GPU
    bash benchmarks/device_check.sh --quick          # tiny models, a few minutes on a CPU
    python benchmarks/device_check.py --quick --parts=equivariance,water_box

Parts, run in this order, each timed on its own and each failure recorded without losing the
others (docs/devices.md, "Accelerator check"):

* ``labels``: the embedded OMol-like dataset labelled with PySCF (``--label_workers``
  processes, default one per CPU) unless ``~/.cache/helm_jax`` (``HELM_JAX_CACHE``) has it;
  run first, before any JAX device is used, and timed apart from the training.
* ``table``: the step-time cases of docs/performance.md (``benchmarks/run_all.py`` CASES,
  one ``benchmarks/step_time.py`` process each, its median and range of ``--table_steps``
  steps after a warm-up) next to the CPU figures of ``benchmarks/results/cpu.json``.
* ``equivariance``: the OMol model (l_max 6, float32; random parameters) on ethanol under a
  random rotation and one putting the C-C bond on the e3nn pole: the largest relative error
  ``max|f(Rx) - D(R) f(x)| / max|f(x)|`` of the node and edge output irreps and of the
  assembled H.
* ``train``: ``experiments/omol_pretrain.py`` through ``train.train_and_evaluate`` for
  ``--train_steps`` steps in a temporary workdir: first and last training loss, time to the
  first step (data, initialisation, compilation), steps/s after it.
* ``water_box``: the ``benchmarks/water_box_predict.py`` model's Hamiltonian forward on
  water boxes of growing size (``--water_atoms``) until one fails (out of memory) or the
  next would not fit in the time budget: graph, compile and run times, device peak bytes
  (``memory_stats``). With several devices the box is split over all of them with
  ``graph_parallel.GraphParallelModel`` (its outputs compared with the one-device forward
  on the first box); on one device ``Predictor``'s jitted forward runs.

Every part but ``labels`` and ``table`` runs in a child process of its own (the same script
with ``--run_part``): a crash or an out-of-memory error stays in its part, the device peak
bytes belong to that part alone, and the parent never initialises a JAX backend (so it
holds no accelerator memory while the children run). The JSON file (``$OUT/device_check.json``
when ``$OUT`` is set, else ``device_check.json``; ``--out``) is rewritten after every part.

Time caps (full mode; ``--quick`` has its own, :data:`DEFAULTS`): a part that would start
after ``--budget_s`` (480 s) is skipped; the table stops starting cases after
``--table_budget_s`` (120 s, ``--case_timeout_s`` each); the training gets a SIGTERM after
``--train_budget_s`` (150 s) and stops after its current step; the water boxes stop growing
when the next size would overrun ``--water_budget_s`` (90 s). Labelling is not capped: the
full embedded set took 6 min 23 s with 2 workers on 2 cores (docs/data.md), its first 40
structures (``--quick``) 127 s; point ``HELM_JAX_CACHE`` at a copy of an already labelled
cache to skip it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

PARTS = ("labels", "table", "equivariance", "train", "water_box")
#: Per-mode defaults of the size and time flags (``None`` on the command line: these).
DEFAULTS = {
    "full": dict(table_cases="", table_steps=5, table_budget_s=120.0, case_timeout_s=100.0,
                 equivariance_model="omol", equivariance_timeout_s=120.0,
                 train_variant="", train_steps=200, train_budget_s=150.0,
                 water_model="default", water_atoms="1000,4000,16000,64000,256000",
                 water_budget_s=90.0, budget_s=480.0),
    "quick": dict(table_cases="md17 ethanol forward", table_steps=3, table_budget_s=120.0,
                  case_timeout_s=120.0, equivariance_model="tiny",
                  equivariance_timeout_s=120.0, train_variant="small", train_steps=20,
                  train_budget_s=180.0, water_model="tiny", water_atoms="300,1000",
                  water_budget_s=90.0, budget_s=900.0),
}


def parse_args(argv=None):
    """Command-line flags (size and time caps default per mode, see :data:`DEFAULTS`)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and sizes")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--out", default=None,
                   help="JSON path (default $OUT/device_check.json, else device_check.json)")
    p.add_argument("--budget_s", type=float, default=None,
                   help="total seconds: parts that would start later are skipped")
    p.add_argument("--threads", type=int, default=0, help="CPUs per step_time.py case (0: all)")
    p.add_argument("--table_cases", default=None,
                   help="comma-separated substrings of run_all.CASES names ('': all)")
    p.add_argument("--table_steps", type=int, default=None, help="timed steps per case")
    p.add_argument("--table_extra", default="", help="more step_time.py arguments")
    p.add_argument("--table_budget_s", type=float, default=None)
    p.add_argument("--case_timeout_s", type=float, default=None)
    p.add_argument("--equivariance_model", choices=["omol", "tiny"], default=None,
                   help="omol: C 128, 3 layers, l_max = m_max = 6; tiny: C 16, 2 layers, "
                        "l_max 6, m_max 2")
    p.add_argument("--equivariance_timeout_s", type=float, default=None)
    p.add_argument("--train_variant", default=None,
                   help="experiments/omol_pretrain.py variant ('' full, 'small' tiny)")
    p.add_argument("--train_steps", type=int, default=None)
    p.add_argument("--train_data", default="embedded",
                   help="'embedded' (labelled on first use) or a labelled dataset file")
    p.add_argument("--train_budget_s", type=float, default=None,
                   help="SIGTERM after this: the run stops after its current step")
    p.add_argument("--label_workers", type=int, default=0, help="0: one per CPU")
    p.add_argument("--water_model", choices=["default", "tiny"], default=None,
                   help="water_box_predict.py's model (default: C 32, 2 layers, l_max 4, "
                        "m_max 2, cutoff 5 A) or its --tiny one")
    p.add_argument("--water_atoms", default=None, help="comma-separated box sizes (atoms)")
    p.add_argument("--water_budget_s", type=float, default=None)
    p.add_argument("--assemble_max_atoms", type=int, default=20000,
                   help="also assemble the CSR H up to this many atoms")
    p.add_argument("--graph_parallel", choices=["auto", "on", "off"], default="auto",
                   help="split water boxes over all devices (auto: when there are several)")
    p.add_argument("--run_part", default="", help=argparse.SUPPRESS)  # child processes
    p.add_argument("--part_out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for k, v in DEFAULTS["quick" if args.quick else "full"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}: choose from {PARTS}")
    if args.out is None:
        args.out = os.path.join(os.environ.get("OUT") or ".", "device_check.json")
    return args


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000] + "\n" + traceback.format_exc()[-3000:]


def device_info() -> dict:
    """JAX version and devices (initialises the backend: children only)."""
    import jax
    devs = jax.devices()
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in devs], "device_kind": devs[0].device_kind,
            "num_devices": len(devs)}


def memory_stats() -> dict:
    """Peak and current bytes of every device that reports them (accelerators)."""
    import jax
    out = {}
    for d in jax.devices():
        try:
            s = d.memory_stats() or {}
        except Exception:  # pylint: disable=broad-except  # CPU clients may not implement it
            s = {}
        if s:
            out[str(d)] = {k: int(s[k]) for k in ("peak_bytes_in_use", "bytes_in_use",
                                                   "bytes_limit") if k in s}
    return out


def peak_rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def mem_available_gib() -> float:
    """Host ``MemAvailable`` (GiB; inf where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("inf")


# -- parts run in this process (no JAX backend) ------------------------------------------


def part_labels(args) -> dict:
    """Labels the embedded dataset of the train part (if that part is selected and it is
    not cached); the seconds are the labelling's alone."""
    if args.train_data != "embedded":
        return {"needed": False, "train_data": args.train_data}
    from helm_jax.configs import omol_pretrain
    from helm_jax.data import embedded
    limit = omol_pretrain.get_config(args.train_variant).data.embedded_limit
    cache = embedded.default_cache_dir()
    before = set(os.listdir(cache)) if os.path.isdir(cache) else set()
    workers = args.label_workers or cpus()
    t = time.perf_counter()
    path = embedded.ensure_labelled(workers=workers, limit=limit, progress=False)
    import h5py
    with h5py.File(path, "r") as f:
        n = len(f.keys())
    return {"needed": True, "path": path, "cached": os.path.basename(path) in before,
            "workers": workers, "limit": limit, "structures": n,
            "labelling_s": round(time.perf_counter() - t, 1)}


def part_table(args, deadline: float) -> dict:
    """The step-time table cases, each in its own step_time.py process."""
    import run_all
    wanted = [s.strip() for s in args.table_cases.split(",") if s.strip()]
    cases = [c for c in run_all.CASES if not wanted or any(w in c[0] for w in wanted)]
    cpu_ref = {}
    try:
        with open(os.path.join(HERE, "results", "cpu.json")) as f:
            cpu_ref = {r["case"]: r for r in json.load(f)["results"] if "median_ms" in r}
    except (OSError, ValueError, KeyError):
        pass
    threads = args.threads or cpus()
    rows, skipped = [], []
    stop = min(deadline, time.time() + args.table_budget_s)
    for name, case_args, ref_ms, ref_mem in cases:
        left = stop - time.time()
        if left < 15:
            skipped.append(name)
            continue
        steps = 2 if "grid150" in name else args.table_steps
        extra = f"--steps={steps} {args.table_extra}".strip()
        r = run_all.run_case(case_args, threads, extra, min(args.case_timeout_s, left))
        r.update(case=name, reference_ms=ref_ms, reference_peak_gib=ref_mem)
        if name in cpu_ref:
            r["cpu_median_ms"] = cpu_ref[name]["median_ms"]
            if "median_ms" in r and r["median_ms"] > 0:
                r["speedup_vs_cpu"] = round(cpu_ref[name]["median_ms"] / r["median_ms"], 2)
        print(json.dumps({k: r.get(k) for k in ("case", "median_ms", "min_ms", "max_ms",
                                                "compile_s", "peak_memory_gib", "error")}),
              flush=True)
        rows.append(r)
    failed = [r["case"] for r in rows if "error" in r]
    return {"threads": threads, "cases": rows, "skipped": skipped, "failed": failed,
            "ok_cases": len(rows) - len(failed)}


# -- parts run in child processes ---------------------------------------------------------


def part_equivariance(args) -> dict:
    """Relative equivariance errors of the node and edge output irreps and of the
    assembled H (l_max 6, float32)."""
    import jax
    import numpy as np
    import step_time
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import equivariance_checks as eq
    from helm_jax import sph
    from helm_jax.configs import base
    from helm_jax.data import batching, graphs
    from helm_jax.data.records import Record
    from helm_jax.model import assemble, helm

    c, template = step_time.setup("omol", "float32")
    if args.equivariance_model == "tiny":
        base.tiny_model(c, l_max=6)
    model = helm.build_model(c, template)
    node_layout, edge_layout = graphs.layouts_for(template, c.heads.reduced_nodes)
    spec = graphs.GraphSpec(template, float(c.model.cutoff),
                            reduced_nodes=bool(c.heads.reduced_nodes))
    z, pos = step_time.molecule("ethanol")

    def batch_of(coords):
        g = graphs.build_graph(Record(elements=z, coords=coords), spec, with_labels=False)
        return batching.pad_batch([g], batching.Budget(g.n_node + 1, g.n_edge, 2), None,
                                  None, np.float32)

    b0 = batch_of(pos)
    inputs = helm.batch_inputs(b0)
    num_graphs = inputs.pop("num_graphs")
    t = time.perf_counter()
    params = jax.jit(lambda r, i: model.init(r, **i, num_graphs=num_graphs))(
        jax.random.PRNGKey(0), inputs)["params"]
    apply = jax.jit(lambda p, i: model.apply({"params": p}, **i, num_graphs=num_graphs,
                                             energy=False))
    out0 = jax.device_get(apply(params, inputs))
    compile_s = time.perf_counter() - t
    n, e = len(z), int(b0.n_edge[0])

    def rotate(layout, x, rot):
        """Flat irreps ``[R, dim]`` rotated: every l piece ``[R, mul, 2l+1]`` times D_l^T."""
        pieces = layout.split_by_l(np.asarray(x, np.float64))
        return np.concatenate([(p @ sph.e3nn_wigner(l, rot).T).reshape(len(x), -1)
                               for l, p in enumerate(pieces)], axis=1)

    shell_ls = [l for zi in z for l in template.element(int(zi)).shell_l]
    h0 = assemble.batch_to_full(out0, b0, node_layout, edge_layout, None)[0]
    rotations = {"random": eq.random_rotation(0),
                 "bond_on_polar_axis": eq.rotation_onto(pos[1] - pos[0],
                                                        np.array([0.0, 1.0, 0.0]))}
    result = {"model": args.equivariance_model, "l_max": int(c.model.l_max),
              "m_max": int(c.model.m_max), "channels": int(c.model.channels),
              "layers": int(c.model.num_layers), "dtype": "float32",
              "template": template.describe(), "params": helm.count_params(params),
              "atoms": n, "edges": e, "compile_s": round(compile_s, 2), "rotations": {}}
    for name, rot in rotations.items():
        b1 = batch_of(pos @ rot.T)
        assert np.array_equal(b1.senders, b0.senders), "rotation changed the edge set"
        i1 = helm.batch_inputs(b1)
        i1.pop("num_graphs")
        out1 = jax.device_get(apply(params, i1))
        h1 = assemble.batch_to_full(out1, b1, node_layout, edge_layout, None)[0]
        d = sph.molecule_ao_wigner(shell_ls, rot)
        result["rotations"][name] = {
            "node_h": eq.relative_error(np.asarray(out1["node_h"][:n], np.float64),
                                        rotate(node_layout, out0["node_h"][:n], rot)),
            "edge_h": eq.relative_error(np.asarray(out1["edge_h"][:e], np.float64),
                                        rotate(edge_layout, out0["edge_h"][:e], rot)),
            "h": eq.relative_error(h1, d @ h0 @ d.T)}
    result["max_rel_error"] = {k: max(r[k] for r in result["rotations"].values())
                               for k in ("node_h", "edge_h", "h")}
    result["memory"] = memory_stats()
    return result


@contextlib.contextmanager
def _train_clock(times: dict):
    """Records the time of every training-row write of ``MetricsLogger`` (log_every = 1:
    each step), and makes ``plot`` and the TensorBoard writer no-ops when matplotlib or
    tensorboardX cannot be imported (neither is needed for the numbers checked here)."""
    import importlib
    import importlib.util
    from helm_jax import metrics_logger
    cls = metrics_logger.MetricsLogger
    write, plot, writer = cls.write, cls.plot, cls.writer

    def timed_write(self, step, split, values):
        if split == "train":
            times[int(step)] = (time.perf_counter(), float(values["loss"]))
        return write(self, step, split, values)
    cls.write = timed_write
    if importlib.util.find_spec("matplotlib") is None:
        cls.plot = lambda self: os.path.join(self.workdir, "learning_curve.png")
    try:
        importlib.import_module("tensorboardX")
    except Exception:  # pylint: disable=broad-except  # e.g. no protobuf

        class _NoWriter:
            def add_scalar(self, *a, **k):
                pass

            def close(self):
                pass
        cls.writer = property(lambda self: _NoWriter())
    try:
        yield
    finally:
        cls.write, cls.plot, cls.writer = write, plot, writer


def part_train(args) -> dict:
    """``train_and_evaluate`` of the OMol config for ``--train_steps`` steps."""
    import importlib.util
    from helm_jax import train
    from helm_jax.configs import omol_pretrain

    c = omol_pretrain.get_config(args.train_variant)
    if args.train_data != "embedded":
        c.data.path, c.data.embedded_limit = args.train_data, None
    steps = int(args.train_steps)
    c.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps, log_every=1)
    result = {"variant": args.train_variant or "full", "data": args.train_data,
              "model": {k: c.model[k] for k in ("channels", "num_layers", "l_max", "m_max",
                                                "cutoff", "dtype")},
              "molecules_per_batch": c.data.batch.molecules_per_batch, "num_steps": steps,
              "matplotlib": importlib.util.find_spec("matplotlib") is not None,
              "tensorboardx": importlib.util.find_spec("tensorboardX") is not None}
    times: dict[int, tuple[float, float]] = {}
    # SIGTERM after the budget (repeated until the loop's own handler takes it): the run
    # stops cleanly after its current step. Earlier ones (setup, compile) are ignored here.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    done = threading.Event()

    def alarm():
        if not done.wait(args.train_budget_s):
            result["stopped_by_budget"] = True
            while not done.wait(2.0):
                os.kill(os.getpid(), signal.SIGTERM)
    timer = threading.Thread(target=alarm, daemon=True)
    t0 = time.perf_counter()
    timer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="helm_device_check_") as workdir, \
                _train_clock(times):
            out = train.train_and_evaluate(c, workdir)
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
    total = time.perf_counter() - t0
    result["seconds_total"] = round(total, 1)
    result["interrupted"] = bool(out.get("interrupted", False))
    if times:
        ks = sorted(times)
        result.update(first_step=ks[0], first_loss=times[ks[0]][1], last_step=ks[-1],
                      last_loss=times[ks[-1]][1], steps_done=ks[-1],
                      time_to_first_step_s=round(times[ks[0]][0] - t0, 1))
        later = [k for k in ks if k >= 2]
        if len(later) >= 2:
            span = times[later[-1]][0] - times[later[0]][0]
            result["steps_per_s_after_compile"] = round((later[-1] - later[0]) / span, 2)
            dts = [times[b][0] - times[a][0] for a, b in zip(later, later[1:])]
            import numpy as np
            result["step_ms_median"] = round(1e3 * float(np.median(dts)), 1)
            result["step_ms_range"] = [round(1e3 * min(dts), 1), round(1e3 * max(dts), 1)]
    for split in ("val", "test"):
        if out.get(split):
            result[split] = {k: float(v) for k, v in out[split].items()}
    result["memory"] = memory_stats()
    return result


def part_water_box(args) -> dict:
    """Hamiltonian forwards of growing water boxes until one fails or the budget ends."""
    import jax
    import numpy as np
    import water_box_predict as wbp
    from helm_jax import graph_parallel, parallel
    from helm_jax import sparse_hamiltonian as sparse_lib
    from helm_jax.data import water_box

    wargs = wbp.parse_args(["--tiny"] if args.water_model == "tiny" else [])
    t_start = time.perf_counter()
    predictor, n_params = wbp.build_predictor(wargs)
    devices = jax.devices()
    use_gp = args.graph_parallel == "on" or (args.graph_parallel == "auto" and len(devices) > 1)
    gp = None
    if use_gp:
        mesh = parallel.make_mesh(len(devices), graph_devices=len(devices))
        gp = graph_parallel.GraphParallelModel(predictor.model, mesh, need=("hamiltonian",))
    m = predictor.config.model
    result = {"mode": f"graph_parallel over {len(devices)} devices" if gp else "single device "
              "(Predictor forward)", "model": {
                  "name": args.water_model, "channels": m.channels, "layers": m.num_layers,
                  "l_max": m.l_max, "m_max": m.m_max, "cutoff": m.cutoff, "dtype": m.dtype,
                  "edge_chunk_size": m.edge_chunk_size, "params": n_params},
              "setup_s": round(time.perf_counter() - t_start, 1), "sizes": []}
    budget_end = time.perf_counter() + args.water_budget_s - result["setup_s"]
    last_cost, last_rss = None, None
    for atoms in [int(a) for a in str(args.water_atoms).split(",") if a.strip()]:
        molecules = max(1, math.ceil(atoms / 3))
        left = budget_end - time.perf_counter()
        if last_cost is not None:  # compile about constant, the rest linear in atoms
            grow = 3 * molecules / last_cost[0]
            estimate = last_cost[2] + grow * max(last_cost[1] - last_cost[2], 0.0)
            if estimate > left:
                result["stopped"] = (f"time budget: {atoms} atoms would take about "
                                     f"{estimate:.0f} s, {left:.0f} s left")
                break
            need = grow * last_rss
            if jax.default_backend() == "cpu" and need > 0.8 * mem_available_gib():
                result["stopped"] = (f"host memory: {atoms} atoms would need about "
                                     f"{need:.1f} GiB, {mem_available_gib():.1f} available")
                break
        row = {"atoms": 3 * molecules, "molecules": molecules}
        result["sizes"].append(row)
        t_size = time.perf_counter()
        rss0 = peak_rss_gib()
        try:
            record = water_box.water_box(molecules)
            t = time.perf_counter()
            (graph,) = predictor.graphs([record])
            row["graph_s"] = round(time.perf_counter() - t, 3)
            (_, batch), = list(predictor.batches([graph]))
            row.update(edges=int(graph.n_edge), n_ao=int(predictor.n_ao(record)),
                       padded_atoms=int(len(batch.nodes["species"])),
                       padded_edges=int(len(batch.senders)))
            if gp:
                t = time.perf_counter()
                parts = gp.partition([batch])
                row["partition_s"] = round(time.perf_counter() - t, 3)
                row["halo_atoms_mean"] = float(np.mean(parts[0].halo_nodes))

                def forward():
                    return gp(predictor.params, [batch], parts)[0]
            else:
                def forward():
                    return wbp.forward(predictor, batch)
            t = time.perf_counter()
            pred = forward()
            row["forward_first_s"] = round(time.perf_counter() - t, 3)
            del pred
            t = time.perf_counter()
            pred = forward()
            row["forward_second_s"] = round(time.perf_counter() - t, 3)
            row["memory"] = memory_stats()
            peaks = [v["peak_bytes_in_use"] for v in row["memory"].values()
                     if "peak_bytes_in_use" in v]
            if peaks:
                row["device_peak_gib"] = round(max(peaks) / 2 ** 30, 3)
            if gp and len(result["sizes"]) == 1:  # the split forward is the whole one
                whole = wbp.forward(predictor, batch)
                row["graph_parallel_rel_error"] = {
                    k: float(np.abs(pred[k] - whole[k]).max() / np.abs(whole[k]).max())
                    for k in ("node_h", "edge_h")}
                del whole
            if row["atoms"] <= args.assemble_max_atoms:
                t = time.perf_counter()
                (csr,) = sparse_lib.batch_to_sparse(pred, batch, predictor.spec.node_layout,
                                                    predictor.spec.edge_layout,
                                                    predictor.stats)
                row["assembly_s"] = round(time.perf_counter() - t, 3)
                row["nnz"] = int(csr.nnz)
                del csr
            del pred
            row["ok"] = True
        except Exception as err:  # pylint: disable=broad-except
            row["ok"] = False
            row["error"] = f"{type(err).__name__}: {err}"[:1500]
            oom = any(s in str(err) for s in ("RESOURCE_EXHAUSTED", "Out of memory",
                                              "out of memory", "OOM"))
            result["stopped"] = ("out of memory" if oom or isinstance(err, MemoryError)
                                 else "error") + f" at {row['atoms']} atoms"
            print(json.dumps(row), flush=True)
            break
        row["seconds"] = round(time.perf_counter() - t_size, 2)
        row["peak_rss_gib"] = round(peak_rss_gib(), 3)
        last_cost = (row["atoms"], row["seconds"],
                     max(row["forward_first_s"] - row["forward_second_s"], 0.0))
        last_rss = max(peak_rss_gib() - rss0, 0.1)
        print(json.dumps(row), flush=True)
    ok = [r for r in result["sizes"] if r.get("ok")]
    result["largest_ok_atoms"] = ok[-1]["atoms"] if ok else 0
    return result


CHILD_PARTS = {"equivariance": part_equivariance, "train": part_train,
               "water_box": part_water_box}


def run_child_part(args) -> None:
    """``--run_part NAME``: runs one part here and writes its JSON to ``--part_out``."""
    out = {"ok": False}
    t = time.perf_counter()
    try:
        out["device"] = device_info()
        out.update(CHILD_PARTS[args.run_part](args))
        out["ok"] = True
    except BaseException as err:  # pylint: disable=broad-except
        out["error"] = _error(err)
        print(out["error"], file=sys.stderr, flush=True)
    out["seconds"] = round(time.perf_counter() - t, 1)
    out["peak_rss_gib"] = round(peak_rss_gib(), 3)
    with open(args.part_out, "w") as f:
        json.dump(out, f, indent=1, default=str)


def spawn_part(name: str, argv: list[str], timeout: float, grace: float = 60.0) -> dict:
    """Runs ``name`` in a child process (output streamed here); SIGTERM at ``timeout``,
    SIGKILL ``grace`` seconds later. Returns its JSON (or why there is none)."""
    fd, path = tempfile.mkstemp(prefix=f"device_check_{name}_", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, f"--run_part={name}",
           f"--part_out={path}"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    note = None
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the train loop stops after its current step
        note = f"timeout after {timeout:.0f} s"
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            note += f"; killed after {grace:.0f} s more"
    try:
        with open(path) as f:
            out = json.load(f)
    except (OSError, ValueError):
        out = {"ok": False, "error": f"the child wrote no result (exit {proc.returncode})"}
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    out.setdefault("seconds", round(time.perf_counter() - t, 1))
    out["exit_code"] = proc.returncode
    if note:
        out["timeout"] = note
    return out


def main(argv=None):
    """Runs the selected parts and writes the JSON after each."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_part:
        return run_child_part(args)
    import run_all
    t_start = time.time()
    deadline = t_start + args.budget_s
    report = {"meta": {"command": "python benchmarks/device_check.py " + " ".join(argv),
                       "quick": args.quick, "python": platform.python_version(),
                       "platform": platform.platform(), "machine": run_all.machine(),
                       "commit": run_all.git_commit(), "parts": args.parts,
                       "budget_s": args.budget_s, "env": {
                           k: os.environ[k] for k in ("JAX_PLATFORMS", "XLA_FLAGS",
                                                      "CUDA_VISIBLE_DEVICES", "HELM_JAX_CACHE",
                                                      "XLA_PYTHON_CLIENT_MEM_FRACTION")
                           if k in os.environ}},
              "parts": {}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def write():
        report["total_s"] = round(time.time() - t_start, 1)
        report["meta"]["loadavg_now"] = [round(x, 2) for x in os.getloadavg()]
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)

    # The train and water parts watch their own budgets; the parent's timeout is a backstop.
    timeouts = {"equivariance": args.equivariance_timeout_s,
                "train": args.train_budget_s + 90.0, "water_box": args.water_budget_s + 60.0}
    for name in PARTS:
        if name not in args.parts or (name == "labels" and "train" not in args.parts):
            continue
        left = deadline - time.time()
        if left < 10:
            report["parts"][name] = {"ok": False, "skipped": f"total budget of "
                                     f"{args.budget_s:.0f} s used up"}
            write()
            continue
        print(f"== {name} ({left:.0f} s of the budget left)", flush=True)
        t = time.perf_counter()
        if name in CHILD_PARTS:
            out = spawn_part(name, argv, min(timeouts[name], left))
        else:
            try:
                out = part_labels(args) if name == "labels" else part_table(args, deadline)
                out["ok"] = True
            except Exception as err:  # pylint: disable=broad-except
                out = {"ok": False, "error": _error(err)}
            out["seconds"] = round(time.perf_counter() - t, 1)
        report["parts"][name] = out
        if "device" in out and "device" not in report["meta"]:
            report["meta"]["device"] = out["device"]
        print(f"== {name}: {'ok' if out.get('ok') else 'FAILED'} in {out['seconds']} s",
              flush=True)
        write()
    write()
    print(json.dumps(summary(report)), flush=True)
    print(f"wrote {args.out}", flush=True)
    return report


def summary(report: dict) -> dict:
    """The headline numbers of a report (one line)."""
    p = report["parts"]
    s = {"total_s": report.get("total_s"), "device": report["meta"].get("device", {}).get(
        "device_kind"), "ok": {k: bool(v.get("ok")) for k, v in p.items()}}
    if "labels" in p:
        s["labelling_s"] = p["labels"].get("labelling_s")
    if "table" in p:
        s["table_ms"] = {r["case"]: r.get("median_ms") for r in p["table"].get("cases", [])}
    if "equivariance" in p:
        s["equivariance"] = p["equivariance"].get("max_rel_error")
    if "train" in p:
        s["train"] = {k: p["train"].get(k) for k in ("first_loss", "last_loss", "last_step",
                                                     "steps_per_s_after_compile")}
    if "water_box" in p:
        s["water_box_largest_ok_atoms"] = p["water_box"].get("largest_ok_atoms")
    return s


if __name__ == "__main__":
    main()
