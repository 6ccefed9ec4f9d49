"""Block-sparse H of a ~10,000-atom water box through ``Predictor``: time and memory per stage.

    python benchmarks/water_box_predict.py                        # 3,333 H2O = 9,999 atoms
    python benchmarks/water_box_predict.py --molecules=1000 --json /tmp/wb1000.json
    python benchmarks/water_box_predict.py --molecules=20 --tiny  # seconds (the test)

A :class:`helm_jax.predict.Predictor` is built from a randomly initialised model (no
checkpoint: config + def2-SVP H/O template + unit statistics, as
``benchmarks/inference_vs_dft.py`` does) and predicts the CSR Hamiltonian of
:func:`helm_jax.data.water_box.water_box` the way ``Predictor.predict_hamiltonian`` does,
stage by stage, each timed on its own:

1. ``graph``: ``Predictor.graphs`` (geometry checks and the cell-list neighbour search);
2. ``pad``: ``Predictor.batches`` (the lone structure padded to its power-of-two class);
3. ``forward``: the jitted Hamiltonian forward (``Predictor._hamiltonian``), first call
   (trace + compile + run) and a second call (run only), outputs fetched to the host;
4. ``assembly``: :func:`helm_jax.sparse_hamiltonian.batch_to_sparse` (de-standardised node
   irreps, both directed edges' blocks symmetrised, scipy CSR).

Prints the model settings, atoms, edges, AOs, the CSR's nnz, each stage's wall seconds and
process CPU seconds (all threads; on a shared machine the CPU time is the steadier number),
and the peak RSS after each stage (``ru_maxrss``: a running maximum, so the increase from
one stage to the next belongs to it), then one JSON line (also written to ``--json``).

The model defaults to a realistic accuracy size for def2-SVP (C = 32, 2 layers, l_max 4 so
that the d-d blocks' l = 4 irreps exist, m_max 2, cutoff 5 A, float32) with the backbone's
edge chunking (``edge_chunk_size`` edges at a time above ``chunk_edges_above`` edges), so the
activations of the ~500,000-edge graph stay bounded: what remains is the ``[E, (l_max+1)^2,
C]`` edge stream (1.7 GB at 524,288 padded edges) and the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

#: ``--tiny``: the smallest model that still has def2-SVP's l = 4 irreps (tests).
TINY = dict(channels=8, layers=1, l_max=4, m_max=1, num_rbf=8, hidden=8)


def parse_args(argv=None):
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", type=int, default=3333, help="H2O molecules (3 atoms each)")
    p.add_argument("--density", type=float, default=1.0, help="g/cm^3")
    p.add_argument("--seed", type=int, default=0, help="orientations of the molecules")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--l_max", type=int, default=4)
    p.add_argument("--m_max", type=int, default=2)
    p.add_argument("--num_rbf", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32,
                   help="edge_channels_hidden, ffn_channels and the heads' hidden width")
    p.add_argument("--cutoff", type=float, default=5.0, help="Angstrom")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--edge_chunk_size", type=int, default=2048)
    p.add_argument("--chunk_edges_above", type=int, default=2048)
    p.add_argument("--tiny", action="store_true",
                   help=f"tiny model for tests: {TINY} (overrides those flags)")
    p.add_argument("--threads", type=int, default=0,
                   help="pin to this many CPUs (0: leave the affinity alone)")
    p.add_argument("--no_assembly", action="store_true", help="skip the CSR assembly")
    p.add_argument("--json", default="", help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.tiny:
        for k, v in TINY.items():
            setattr(args, k, v)
    return args


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (GiB; ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def model_config(args):
    """``(config, template)`` of the water-box model (H and O, def2-SVP)."""
    from helm_jax import basis
    from helm_jax.configs import base

    c = base.get_config()
    c.model.update(channels=args.channels, num_layers=args.layers, l_max=args.l_max,
                   m_max=args.m_max, num_rbf=args.num_rbf, cutoff=float(args.cutoff),
                   edge_channels_hidden=args.hidden, ffn_channels=args.hidden,
                   dtype=args.dtype, param_dtype=args.dtype,
                   edge_chunk_size=args.edge_chunk_size,
                   chunk_edges_above=args.chunk_edges_above)
    # Unit statistics (no training labels): the head predicts Eh directly.
    c.heads.update(hidden=args.hidden, energy_hidden=args.hidden, label_scale="none")
    return c, basis.make_template([1, 8], "def2-svp")


def build_predictor(args):
    """A :class:`Predictor` of a randomly initialised model (parameters from one water
    molecule: they do not depend on the graph)."""
    import jax
    import numpy as np
    from helm_jax import checkpoint as ckpt_lib
    from helm_jax.data import batching, graphs, statistics, water_box
    from helm_jax.model import helm
    from helm_jax.predict import Predictor

    c, template = model_config(args)
    model = helm.build_model(c, template)
    spec = graphs.GraphSpec(template, float(c.model.cutoff))
    g = graphs.build_graph(water_box.water_box(2), spec, with_labels=False)
    batch = batching.pad_batch([g], batching.Budget(g.n_node + 1, g.n_edge, 2), None, None,
                               np.dtype(args.dtype))
    inputs = helm.batch_inputs(batch)
    num_graphs = inputs.pop("num_graphs")
    params = jax.jit(lambda r, i: model.init(r, **i, num_graphs=num_graphs))(
        jax.random.PRNGKey(0), inputs)["params"]
    mul0 = graphs.layouts_for(template, c.heads.reduced_nodes)[0].muls[0]
    stats = statistics.Statistics(node_mean=np.zeros((119, mul0)),
                                  node_std=np.ones((119, mul0)), energy_ref=np.zeros(119),
                                  energy_std=1.0, n_molecules=0)
    loaded = ckpt_lib.LoadedModel(config=c, template=template, stats=stats, params=params,
                                  step=0, meta={})
    return Predictor(loaded), helm.count_params(params)


def forward(predictor, batch) -> dict:
    """The jitted Hamiltonian forward of ``predict_hamiltonian`` on one padded batch, outputs
    fetched to the host (``Predictor._hamiltonian``: the predictor times no stage itself)."""
    import jax
    hamiltonian = predictor._hamiltonian  # pylint: disable=protected-access
    return jax.device_get(hamiltonian(predictor.params, batch))


def run(args) -> tuple[dict, object, object]:
    """Builds the predictor and the box, times every stage; ``(result, csr, predictor)``."""
    import jax
    import numpy as np
    from helm_jax import sparse_hamiltonian as sparse_lib
    from helm_jax.data import water_box

    t_start = time.perf_counter()
    predictor, n_params = build_predictor(args)
    m = predictor.config.model
    result = {
        "model": {"channels": m.channels, "layers": m.num_layers, "l_max": m.l_max,
                  "m_max": m.m_max, "num_rbf": m.num_rbf, "hidden": args.hidden,
                  "cutoff": m.cutoff, "dtype": m.dtype, "edge_chunk_size": m.edge_chunk_size,
                  "chunk_edges_above": m.chunk_edges_above, "params": n_params,
                  "basis": "def2-svp (H, O)"},
        "molecules": args.molecules, "density": args.density,
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "setup_s": round(time.perf_counter() - t_start, 2),
        "peak_rss_gib": {"setup": round(peak_rss_gib(), 3)}}
    record = water_box.water_box(args.molecules, density=args.density, seed=args.seed)
    n_ao = predictor.n_ao(record)
    times = result["seconds"] = {}
    cpu = result["cpu_seconds"] = {}  # process CPU time (all threads): load-independent-ish

    def stage(name, t, c):
        times[name] = round(time.perf_counter() - t, 3)
        cpu[name] = round(time.process_time() - c, 3)

    t, c = time.perf_counter(), time.process_time()
    (graph,) = predictor.graphs([record])
    stage("graph", t, c)
    result["peak_rss_gib"]["graph"] = round(peak_rss_gib(), 3)

    t, c = time.perf_counter(), time.process_time()
    (_, batch), = list(predictor.batches([graph]))
    stage("pad", t, c)
    result.update(atoms=int(graph.n_node), edges=int(graph.n_edge), n_ao=int(n_ao),
                  padded_atoms=int(len(batch.nodes["species"])),
                  padded_edges=int(len(batch.senders)))

    t, c = time.perf_counter(), time.process_time()
    pred = forward(predictor, batch)
    stage("forward_first", t, c)
    result["peak_rss_gib"]["forward_first"] = round(peak_rss_gib(), 3)
    del pred
    t, c = time.perf_counter(), time.process_time()
    pred = forward(predictor, batch)
    stage("forward_second", t, c)
    result["peak_rss_gib"]["forward_second"] = round(peak_rss_gib(), 3)
    result["output_mib"] = round(sum(np.asarray(x).nbytes for x in pred.values()) / 2 ** 20, 1)

    csr = None
    if not args.no_assembly:
        t, c = time.perf_counter(), time.process_time()
        (csr,) = sparse_lib.batch_to_sparse(pred, batch, predictor.spec.node_layout,
                                            predictor.spec.edge_layout, predictor.stats)
        stage("assembly", t, c)
        result["peak_rss_gib"]["assembly"] = round(peak_rss_gib(), 3)
        result["nnz"] = int(csr.nnz)
        result["csr_fill"] = round(csr.nnz / float(n_ao) ** 2, 5)
        result["csr_mib"] = round((csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes)
                                  / 2 ** 20, 1)
    times["predict_total_second_call"] = round(
        times["graph"] + times["pad"] + times["forward_second"] + times.get("assembly", 0.0), 3)
    result["compilations"] = predictor.num_compilations
    result["peak_rss_gib_total"] = round(peak_rss_gib(), 3)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return result, csr, predictor


def report(r: dict) -> str:
    """The human-readable summary of a result."""
    m, s, rss = r["model"], r["seconds"], r["peak_rss_gib"]
    lines = [
        f"model: channels {m['channels']}, layers {m['layers']}, l_max {m['l_max']}, m_max "
        f"{m['m_max']}, cutoff {m['cutoff']} A, {m['dtype']}, edge_chunk_size "
        f"{m['edge_chunk_size']} above {m['chunk_edges_above']} edges, {m['params']:,} "
        f"parameters; {r['device']} ({r['backend']})",
        f"water box: {r['molecules']:,} H2O = {r['atoms']:,} atoms, {r['edges']:,} edges "
        f"(padded {r['padded_atoms']:,} / {r['padded_edges']:,}), {r['n_ao']:,} AOs"
        + (f", nnz {r['nnz']:,} ({100 * r['csr_fill']:.3f} % of n_ao^2, CSR "
           f"{r['csr_mib']:,.0f} MiB)" if "nnz" in r else ""),
        f"graph {s['graph']:.2f} s, pad {s['pad']:.2f} s, forward {s['forward_first']:.2f} s "
        f"first call (compile included), {s['forward_second']:.2f} s second"
        + (f", sparse assembly {s['assembly']:.2f} s" if "assembly" in s else ""),
        "process CPU seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_seconds"].items()),
        "peak RSS (GiB) after " + ", ".join(f"{k} {v:.2f}" for k, v in rss.items()),
    ]
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark, prints the summary and one JSON line."""
    args = parse_args(argv)
    if args.threads and hasattr(os, "sched_setaffinity"):
        import step_time
        step_time.pin_threads(args.threads)
    if args.dtype == "float64":
        import jax
        jax.config.update("jax_enable_x64", True)
    result, _, _ = run(args)
    result["command"] = "python benchmarks/water_box_predict.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print(report(result), flush=True)
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
