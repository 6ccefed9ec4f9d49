"""Step time and peak memory of one HELM configuration on one molecule; prints JSON.

    python benchmarks/step_time.py --config=md17 --molecule=ethanol --dtype=float32 --mode=train
    python benchmarks/step_time.py --config=omol --molecule=grid150 --mode=train --remat

Cases match the PyTorch reference table of the performance issue: batch of one molecule,
median of >= 5 steps after warm-up (compile excluded and reported separately), peak memory
as host peak RSS on CPU (``ru_maxrss``) or device peak bytes on GPU. Threads: the process is
pinned to 2 CPUs (``os.sched_setaffinity``) and XLA's CPU client uses them; run one case per
process (``benchmarks/run_all.py`` does) so peak memory belongs to that case alone.

Molecules: ``ethanol`` / ``uracil`` (first rMD17 frames, shipped here) and ``gridN``:
ceil(N/9) copies of the ethanol frame, centred, on a cubic grid 4 A apart filled x, then y,
then z, truncated to the first N atoms. Edges: all ordered pairs closer than the cutoff.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def parse_args(argv=None):
    """Command-line arguments of one benchmark case."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=["md17", "omol"], default="md17")
    p.add_argument("--molecule", default="ethanol", help="ethanol, uracil or gridN")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--mode", choices=["forward", "energy", "train"], default="train",
                   help="forward: H + energy (no grad); energy: the energy-only path, which "
                        "skips every edge update; train: fwd + bwd + optimiser")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--remat", action="store_true", help="rematerialise each layer")
    p.add_argument("--l_max", type=int, default=None, help="override l_max (scaling tables)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--edge_chunk_size", type=int, default=None,
                   help="override config.model.edge_chunk_size (0: never chunk)")
    p.add_argument("--chunk_edges_above", type=int, default=None,
                   help="override config.model.chunk_edges_above")
    return p.parse_args(argv)


def molecule(name: str):
    """``(atomic numbers [n], positions [n, 3])`` of a benchmark molecule."""
    import ase.io
    import numpy as np
    if name in ("ethanol", "uracil"):
        atoms = ase.io.read(os.path.join(HERE, f"{name}_frame0.xyz"))
        return atoms.numbers, atoms.positions
    if not name.startswith("grid"):
        raise ValueError(f"Unknown molecule {name!r}: ethanol, uracil or gridN.")
    n = int(name[4:])
    ethanol = ase.io.read(os.path.join(HERE, "ethanol_frame0.xyz"))
    pos0 = ethanol.positions - ethanol.positions.mean(0)
    copies = math.ceil(n / len(ethanol))
    side = math.ceil(round(copies ** (1 / 3), 9))
    zs, xs = [], []
    for k in range(copies):
        shift = 4.0 * np.array([k % side, (k // side) % side, k // (side * side)])
        zs.append(ethanol.numbers)
        xs.append(pos0 + shift)
    return np.concatenate(zs)[:n], np.concatenate(xs)[:n]


def setup(config: str, dtype: str, l_max: int | None = None, remat: bool = False,
          **model_overrides):
    """``(config, template)`` of a benchmark configuration (md17 or omol).

    Args:
      config: ``md17`` (l_max 4, def2-SVP template) or ``omol`` (l_max 6, def2-TZVPD).
      dtype: compute and parameter dtype.
      l_max: override l_max (and m_max); the template is reduced to irreps that fit.
      remat: rematerialise each layer.
      **model_overrides: other ``config.model`` fields (None values are ignored).

    Returns:
      ``(config, template)``.
    """
    from helm_jax import basis
    from helm_jax.configs import base

    c = base.get_config()
    if config == "md17":
        base.md17_model(c)
        template = basis.make_template("HCNO", "def2-svp")
    else:
        c.model.update(l_max=6, m_max=6, num_rbf=128, cutoff=12.0)
        template = basis.make_template(basis.OMOL_CSH_ELEMENTS, "def2-tzvpd", "def2-tzvpd")
    if l_max is not None:
        c.model.update(l_max=l_max, m_max=l_max)
        if l_max < 2 * template.l_max:  # a reduced template whose irreps fit the backbone
            counts = tuple(template.counts[: l_max // 2 + 1])
            template = basis.Template(template.basis, template.ecp, template.elements, counts)
    c.model.update(dtype=dtype, param_dtype=dtype, remat=remat)
    c.model.update({k: v for k, v in model_overrides.items() if v is not None})
    return c, template


def build(args):
    """Model, parameters, one padded batch and the step function of the case.

    Returns:
      ``(run, info)``: ``run()`` performs one step (forward, energy-only forward or train
      step with the optimiser update) and returns its outputs; ``info`` has atoms, edges,
      template and parameter count.
    """
    import jax
    import numpy as np
    from helm_jax import losses, parallel
    from helm_jax.data import batching, graphs
    from helm_jax.data.records import Record
    from helm_jax.model import helm
    from helm_jax.train import TrainState, make_train_step, plateau_schedule
    from helm_jax.optim import build_optimizer

    c, template = setup(args.config, args.dtype, args.l_max, args.remat,
                        edge_chunk_size=args.edge_chunk_size,
                        chunk_edges_above=args.chunk_edges_above)
    z, pos = molecule(args.molecule)
    spec = graphs.GraphSpec(template, float(c.model.cutoff))
    g = graphs.build_graph(Record(elements=z, coords=pos), spec, with_labels=False)
    rng = np.random.default_rng(0)
    g = graphs.MolGraph(species=g.species, positions=g.positions, senders=g.senders,
                        receivers=g.receivers, forces=None, energy=np.nan, key="bench",
                        node_labels=rng.normal(size=(g.n_node, spec.node_layout.dim)),
                        edge_labels=rng.normal(size=(g.n_edge, spec.edge_layout.dim)))
    budget = batching.Budget(g.n_node + 1, g.n_edge, 2)
    dtype = np.dtype(args.dtype)
    batch = batching.pad_batch([g], budget, spec.node_layout.dim, spec.edge_layout.dim, dtype)
    model = helm.build_model(c, template)
    inputs = helm.batch_inputs(batch)
    num_graphs = inputs.pop("num_graphs")
    # Parameters do not depend on the graph: initialise on the small ethanol graph, so a
    # large molecule's case never runs (or compiles) an extra full-size forward pass.
    z0, pos0 = molecule("ethanol")
    g0 = graphs.build_graph(Record(elements=z0, coords=pos0), spec, with_labels=False)
    small = helm.batch_inputs(batching.pad_batch(
        [g0], batching.Budget(g0.n_node + 1, g0.n_edge, 2), None, None, dtype))
    small.pop("num_graphs")
    params = jax.jit(lambda r, i: model.init(r, **i, num_graphs=num_graphs))(
        jax.random.PRNGKey(0), small)["params"]
    info = {"atoms": int(g.n_node), "edges": int(g.n_edge), "template": template.describe(),
            "params": int(sum(x.size for x in jax.tree.leaves(params)))}
    if args.mode in ("forward", "energy"):
        fwd = jax.jit(lambda p, i: model.apply({"params": p}, **i, num_graphs=num_graphs,
                                               hamiltonian=args.mode == "forward"))
        return (lambda: fwd(params, inputs)), info
    mesh = parallel.make_mesh(1)
    tx = build_optimizer(c.optim, 100, "none", params)
    ctx = (losses.LossContext.create(spec.node_layout, spec.edge_layout, None)
           if args.l_max is None else occupied_context(spec))
    step = parallel.data_parallel(make_train_step(model, tx, ctx, {"hamiltonian": 1.0},
                                                  {"hamiltonian"}), mesh, donate=(0,))
    state = {"s": parallel.replicate(TrainState.create(params, tx, plateau_schedule(c.optim),
                                                       0), mesh)}
    stacked = parallel.shard(batching.stack_device_batches([batch]), mesh)

    def run():
        """One train step (state updated in place); returns the metrics."""
        state["s"], metrics = step(state["s"], stacked)
        return metrics
    return run, info


def occupied_context(spec):
    """Loss context in which every element occupies every shell slot and AO.

    The l_max sweep cuts the template's shells to the irreps that fit, so C and O's real
    basis (with its d and f shells) no longer fits and ``LossContext.create`` refuses it.
    The masks are data: all-true tables give the same arrays, and the same cost, as the real
    ones.
    """
    import numpy as np
    from helm_jax import losses
    template = spec.node_layout.template
    mul0 = spec.node_layout.muls[0]
    return losses.LossContext(spec.node_layout, spec.edge_layout,
                              np.ones((119, len(template.slot_l)), bool),
                              np.zeros((119, mul0)), np.ones((119, mul0)),
                              np.ones((119, template.n_ao), bool))


def peak_memory_gib() -> tuple[float, str]:
    """Device peak bytes on accelerators, else host peak RSS, in GiB."""
    import jax
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**30, f"{dev.platform} peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host peak RSS"


def pin_threads(threads: int) -> None:
    """Pins this process to its first ``threads`` CPUs (XLA:CPU's thread pool follows the
    affinity) and sets ``OMP_NUM_THREADS`` (PySCF) if unset; call before importing jax."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def main(argv=None):
    """Builds the case, times ``--steps`` steps after warm-up and prints one JSON line."""
    args = parse_args(argv)
    pin_threads(args.threads)
    import jax
    import numpy as np
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    run, info = build(args)
    jax.block_until_ready(run())  # compile + first step
    compile_s = time.perf_counter() - t0
    for _ in range(max(args.warmup - 1, 0)):
        jax.block_until_ready(run())
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t)
    mem, mem_kind = peak_memory_gib()
    out = {**vars(args), **info, "device": str(jax.devices()[0].device_kind),
           "compile_s": round(compile_s, 2), "median_ms": round(1e3 * float(np.median(times)), 1),
           "min_ms": round(1e3 * min(times), 1), "max_ms": round(1e3 * max(times), 1),
           "peak_memory_gib": round(mem, 3), "memory_kind": mem_kind,
           "loadavg": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
