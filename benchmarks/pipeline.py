"""Input pipeline throughput vs the model's step rate, and compiled shapes per epoch; JSON.

    python benchmarks/pipeline.py                  # embedded set, OMol template, 2 threads
    python benchmarks/pipeline.py --epochs 2 --molecules_per_batch 4

Reads every structure of a size-diverse dataset (default: the embedded OMol-like set
``helm_jax/data/embedded/molecules.extxyz`` with its cached PySCF PBE/def2-TZVPD labels from
``helm_jax.data.embedded.ensure_labelled``; with ``--fake_labels`` or without a cache, the
geometries alone, i.e. graphs without block labels), converts each to a graph with block
labels (``GraphDataset``, no cache: every epoch pays the full conversion), and batches them
with the training pipeline (``BatchIterator``, the training config's buckets). Reports
structures/s and batches/s for read + convert + batch, the number of distinct padded
shapes (= compiled programs of the train step) over each epoch, and the model's step rate
from ``benchmarks/results/cpu.json`` (OMol train steps) so the two can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import step_time  # noqa: E402


def model_step_rate(results: str) -> dict:
    """OMol train step times ``{case: {median_ms, steps_per_s}}`` from a run_all.py file."""
    if not os.path.exists(results):
        return {}
    with open(results) as f:
        data = json.load(f)
    out = {}
    for r in data.get("results", []):
        if r.get("case", "").startswith("omol") and "train" in r.get("case", "") \
                and "median_ms" in r:
            out[r["case"]] = {"median_ms": r["median_ms"],
                              "steps_per_s": round(1e3 / r["median_ms"], 3)}
    return out


def main(argv=None):
    """Times read + convert + batch over ``--epochs`` epochs; prints and returns the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="embedded",
                   help="'embedded' (cached labels of the shipped set) or a dataset file")
    p.add_argument("--fake_labels", action="store_true",
                   help="use the embedded geometries without labels (no PySCF cache needed)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--molecules_per_batch", type=int, default=4)
    p.add_argument("--num_buckets", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=os.path.join(HERE, "results", "cpu.json"))
    args = p.parse_args(argv)
    step_time.pin_threads(args.threads)
    import jax
    import numpy as np
    from helm_jax import basis
    from helm_jax.data import embedded, pipeline, readers
    from helm_jax.data.graphs import GraphSpec

    template = basis.make_template(basis.OMOL_CSH_ELEMENTS, "def2-tzvpd", "def2-tzvpd")
    with_labels = True
    if args.data == "embedded":
        key = embedded.cache_key()
        path = os.path.join(embedded.default_cache_dir(), f"embedded-{key}.h5")
        if args.fake_labels or not os.path.exists(path):
            path, with_labels = embedded.GEOMETRIES, False
    else:
        path = args.data
    reader = readers.open_dataset(path)
    spec = GraphSpec(template, cutoff=12.0)
    data = pipeline.GraphDataset(reader, spec, with_labels=with_labels, cache=False)
    t0 = time.perf_counter()
    n_nodes, n_edges = data.sizes()
    scan_s = time.perf_counter() - t0
    cfg = pipeline.BatchConfig(molecules_per_batch=args.molecules_per_batch,
                               num_buckets=args.num_buckets)
    it = pipeline.BatchIterator(data, np.arange(len(data)), cfg, prefetch=0)
    epochs = []
    for epoch in range(args.epochs):
        shapes, n_struct, n_batch = set(), 0, 0
        t0 = time.perf_counter()
        for bucket, per_dev in it.plan(epoch):
            batch = it.make_batch(bucket, per_dev)
            shapes.add(tuple(tuple(x.shape) for x in jax.tree.leaves(batch)))
            n_struct += sum(len(d) for d in per_dev)
            n_batch += 1
        dt = time.perf_counter() - t0
        epochs.append({"epoch": epoch, "structures": n_struct, "batches": n_batch,
                       "seconds": round(dt, 3), "structures_per_s": round(n_struct / dt, 2),
                       "batches_per_s": round(n_batch / dt, 2),
                       "distinct_shapes": len(shapes)})
    out = {"data": path, "labels": "PySCF cache" if with_labels else "none (geometry only)",
           "structures": len(data), "atoms_min_max": [int(n_nodes.min()), int(n_nodes.max())],
           "edges_min_max": [int(n_edges.min()), int(n_edges.max())],
           "size_scan_s": round(scan_s, 3), "budgets": [b.to_dict() for b in it.budgets],
           "molecules_per_batch": args.molecules_per_batch, "threads": args.threads,
           "loadavg": [round(x, 2) for x in os.getloadavg()], "epochs": epochs,
           "model_train_steps": model_step_rate(args.results)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
