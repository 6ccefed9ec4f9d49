"""Graph parallelism at scale: per-device memory, time and halo traffic against P.

For liquid-water boxes of ``--atoms`` atoms (1,000 / 4,000 / 16,000 by default) and
``P`` = ``--parts`` devices on the ``graph`` mesh axis (fake CPU devices here; real GPUs or
TPU cores elsewhere), one subprocess per (size, P) measures:

* per-device memory of the compiled forward and train step (XLA's ``memory_analysis``:
  arguments + outputs + temporaries of one device's program) and the process's peak RSS
  (all fake devices share one process, so RSS is the sum over devices);
* forward and train-step wall time (median and range of ``--repeats`` calls after
  compilation; on fake CPU devices the P programs share the same cores, so times show the
  overhead of partitioning, not a speed-up);
* halo atoms and bytes per exchange and device (``(l_max+1)^2 * channels`` numbers per
  atom, one exchange after the node initialisation and one per layer);
* the partition: owned atoms and edges per part (max / mean).

It prints a table and the fitted exponents ``memory ~ P^a`` (ideal -1) and ``halo ~
atoms^b`` at fixed P (surface: 2/3; volume: 1), and writes ``--json``.

    python benchmarks/graph_parallel.py --repeats=1           # the table of docs/graph_parallel.md
    python benchmarks/graph_parallel.py --atoms=999 --parts=1,2 --repeats=1   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _model_config(args):
    from helm_jax.configs import base
    c = base.get_config()
    base.tiny_model(c, l_max=args.l_max)
    c.model.update(channels=args.channels, num_layers=args.layers, m_max=min(2, args.l_max),
                   num_rbf=8, edge_channels_hidden=16, ffn_channels=args.channels,
                   cutoff=args.cutoff, dtype="float32", param_dtype="float32",
                   edge_chunk_size=args.edge_chunk, chunk_edges_above=args.edge_chunk)
    c.heads.update(hidden=16, energy_hidden=16)
    return c


def _labelled_batch(n_atoms: int, args):
    """A padded batch of one water box with random labels (shapes are what count)."""
    from helm_jax import basis
    from helm_jax.data import batching, graphs
    from helm_jax.data.water_box import water_box
    template = basis.make_template("HO", args.basis)
    spec = graphs.GraphSpec(template, args.cutoff)
    record = water_box(max(1, n_atoms // 3), seed=0)
    g = graphs.build_graph(record, spec, with_labels=False, validate=False)
    rng = np.random.default_rng(0)
    g = dataclasses.replace(
        g, node_labels=rng.normal(size=(g.n_node, spec.node_layout.dim)) * 0.1,
        edge_labels=rng.normal(size=(g.n_edge, spec.edge_layout.dim)) * 0.01, energy=0.0,
        forces=rng.normal(size=(g.n_node, 3)) * 0.01)
    budget = batching.Budget(g.n_node + 1, g.n_edge, 2)
    batch = batching.pad_batch([g], budget, spec.node_layout.dim, spec.edge_layout.dim,
                               np.float32)
    return template, spec, g, batch


def _timed(fn, repeats: int) -> dict:
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"first_s": first, "median_s": float(np.median(times)),
            "min_s": float(np.min(times)), "max_s": float(np.max(times))}


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes", "alias_size_in_bytes")
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    out["device_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                           + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
    return out


def run_one(n_atoms: int, parts: int, args) -> dict:
    """Measures one (size, P) in this process (JAX sees at least P devices)."""
    import jax
    import jax.numpy as jnp
    import optax
    from helm_jax import graph_parallel, losses, parallel
    from helm_jax.model import helm
    from helm_jax.train import TrainState, make_train_step, plateau_schedule

    t0 = time.perf_counter()
    template, spec, g, batch = _labelled_batch(n_atoms, args)
    graph_s = time.perf_counter() - t0
    c = _model_config(args)
    model = helm.build_model(c, template)
    ctx = losses.LossContext.create(spec.node_layout, spec.edge_layout, None)
    small = _labelled_batch(30, args)[3]
    params = model.init(jax.random.PRNGKey(0), **helm.batch_inputs(small))["params"]
    need = {"hamiltonian", "energy", "forces"} if args.forces else {"hamiltonian", "energy"}
    weights = {"hamiltonian": 1.0, "energy": 0.1, **({"forces": 1.0} if args.forces else {})}
    k = (args.l_max + 1) ** 2
    row = {"atoms": g.n_node, "edges": g.n_edge, "parts": parts,
           "graph_build_s": graph_s, "model": {
               "channels": args.channels, "layers": args.layers, "l_max": args.l_max,
               "cutoff": args.cutoff, "basis": args.basis, "edge_chunk": args.edge_chunk,
               "params": helm.count_params(params)}}
    mesh = parallel.make_mesh(parts, graph_devices=parts)
    if parts > 1:
        t0 = time.perf_counter()
        pb = graph_parallel.partition_batch(batch, parts)
        row["partition_s"] = time.perf_counter() - t0
        owned = (pb.node_rows >= 0).sum(axis=1)
        edges = (pb.edge_rows >= 0).sum(axis=1)
        sent, real = pb.halo_bytes(k * args.channels, 4)
        row.update(owned_atoms_max=int(owned.max()), owned_atoms_mean=float(owned.mean()),
                   edges_max=int(edges.max()), edges_mean=float(edges.mean()),
                   halo_atoms_mean=float(pb.halo_nodes.mean()),
                   halo_atoms_max=int(pb.halo_nodes.max()), halo_width=pb.halo_width,
                   halo_bytes_sent=sent, halo_bytes_real=real,
                   local_rows=int(pb.graph.nodes["species"].shape[1]),
                   local_edges=int(pb.graph.senders.shape[1]))
        stacked = graph_parallel.stack_parts([pb])
    else:
        from helm_jax.data import batching
        stacked = batching.stack_device_batches([batch])
    sharded = parallel.shard(stacked, mesh)
    reps = parallel.replicate(params, mesh)
    axes = parallel.mesh_axes(mesh)

    def forward(p, b):  # one device's part; a checksum keeps every output live
        out = losses.model_outputs(model, p, b, {"hamiltonian", "energy"}, ctx)
        return jax.lax.psum(sum(jnp.sum(x) for x in jax.tree.leaves(out)), axes)
    fwd = parallel.data_parallel(forward, mesh)
    compiled = fwd.lower(reps, sharded).compile()
    row["forward_memory"] = _memory(compiled)
    row["forward"] = _timed(lambda: jax.block_until_ready(compiled(reps, sharded)),
                            args.repeats)
    if args.train:
        tx = optax.adam(1e-3)
        state = parallel.replicate(TrainState.create(params, tx, plateau_schedule(c.optim), 0),
                                   mesh)
        step = parallel.data_parallel(make_train_step(model, tx, ctx, weights, need,
                                                      axes=axes), mesh)
        compiled = step.lower(state, sharded).compile()
        row["train_memory"] = _memory(compiled)
        row["train_step"] = _timed(lambda: jax.block_until_ready(compiled(state, sharded)),
                                   args.repeats)
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def _fit(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0)
    if ok.sum() < 2:
        return None
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def _table(rows: list[dict]) -> str:
    lines = ["| atoms | edges | P | fwd mem/device MiB | train mem/device MiB | peak RSS MiB | "
             "fwd s (median, range) | train s (median, range) | halo atoms/part | "
             "halo KiB/exchange (real, sent) |", "|" + "---|" * 10]
    mib = 2.0 ** 20
    for r in rows:
        tm = r.get("train_memory", {}).get("device_bytes")
        ts = r.get("train_step")
        lines.append(
            f"| {r['atoms']:,} | {r['edges']:,} | {r['parts']} | "
            f"{r['forward_memory'].get('device_bytes', 0) / mib:,.0f} | "
            f"{'' if tm is None else f'{tm / mib:,.0f}'} | {r['peak_rss_bytes'] / mib:,.0f} | "
            f"{r['forward']['median_s']:.2f} ({r['forward']['min_s']:.2f}-"
            f"{r['forward']['max_s']:.2f}) | "
            + ("" if ts is None else f"{ts['median_s']:.2f} ({ts['min_s']:.2f}-{ts['max_s']:.2f})")
            + f" | {r.get('halo_atoms_mean', 0):,.0f} | "
            f"{r.get('halo_bytes_real', 0) / 1024:,.0f}, {r.get('halo_bytes_sent', 0) / 1024:,.0f} |")
    return "\n".join(lines)


def summarize(rows: list[dict]) -> dict:
    """Exponents: per-device memory against P at each size, halo against atoms at each P."""
    out = {"memory_vs_parts": {}, "halo_vs_atoms": {}}
    for n in sorted({r["atoms"] for r in rows}):
        rs = [r for r in rows if r["atoms"] == n]
        key = "train_memory" if all("train_memory" in r for r in rs) else "forward_memory"
        out["memory_vs_parts"][n] = _fit([r["parts"] for r in rs],
                                         [r[key].get("device_bytes", 0) for r in rs])
    for p in sorted({r["parts"] for r in rows if r["parts"] > 1}):
        rs = [r for r in rows if r["parts"] == p]
        out["halo_vs_atoms"][p] = _fit([r["atoms"] for r in rs],
                                       [r["halo_atoms_mean"] for r in rs])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--atoms", default="1000,4000,16000")
    p.add_argument("--parts", default="1,2,4,8")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--l_max", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--basis", default="sto-3g")
    p.add_argument("--edge_chunk", type=int, default=4096,
                   help="edges per chunk (the same for every P, so every part is chunked)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_train", dest="train", action="store_false")
    p.add_argument("--forces", action="store_true", help="train on forces too")
    p.add_argument("--json", default="")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # "atoms,parts": child mode
    args = p.parse_args()
    if args.one:
        n, parts = (int(x) for x in args.one.split(","))
        print(json.dumps(run_one(n, parts, args)), flush=True)
        return
    rows = []
    flags = [a for a in sys.argv[1:] if not a.startswith(("--json", "--atoms", "--parts"))]
    for n in (int(x) for x in args.atoms.split(",")):
        for parts in (int(x) for x in args.parts.split(",")):
            env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_"
                                               f"host_platform_device_count={parts}").strip()}
            if "JAX_PLATFORMS" not in os.environ:
                env["JAX_PLATFORMS"] = "cpu"
            proc = subprocess.run([sys.executable, __file__, f"--one={n},{parts}", *flags],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                print(f"atoms={n} P={parts} failed:\n{proc.stderr[-3000:]}", flush=True)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print(_table(rows))
    summary = summarize(rows)
    print("memory per device ~ P^a:", {k: None if v is None else round(v, 3)
                                        for k, v in summary["memory_vs_parts"].items()})
    print("halo atoms per part ~ atoms^b:", {k: None if v is None else round(v, 3)
                                              for k, v in summary["halo_vs_atoms"].items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "argv": sys.argv[1:]}, f, indent=1)


if __name__ == "__main__":
    main()
