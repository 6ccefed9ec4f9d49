"""Per-op profile of one benchmark case: XLA:CPU thunk time per op and per op category.

    python benchmarks/profile_ops.py --config=md17 --molecule=ethanol --mode=train
    XLA_FLAGS=--xla_dump_to=/tmp/dump python benchmarks/profile_ops.py ...   # + optimised HLO

Takes ``step_time.py``'s arguments, builds the case, runs 2 warm-up steps, then traces 3
steps with ``jax.profiler.trace(create_perfetto_trace=True)`` and prints the summed duration
per op (``ynn_fusion.N`` = a YNNPACK GEMM fusion, ``all-reduce``, ``gather_bitcast_fusion`` ...)
and per category (op name without its numeric suffix), in ms per step. Thunks of the two
threads overlap, so the category sum can exceed the wall time. Look up an op's HLO by name in
``<dump>/module_*.cpu_after_optimizations.txt``.
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None):
    """Profiles the case given by step_time.py arguments; prints the tables."""
    import step_time
    args = step_time.parse_args(argv)
    step_time.pin_threads(args.threads)
    import jax
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    run, _ = step_time.build(args)
    jax.block_until_ready(run())
    print("compile_s", round(time.perf_counter() - t0, 1), flush=True)
    for _ in range(2):
        jax.block_until_ready(run())
    steps = 3
    trace_dir = tempfile.mkdtemp(prefix="helm_profile_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            jax.block_until_ready(run())
    path = glob.glob(trace_dir + "/**/*.json.gz", recursive=True)[0]
    trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, category = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        name = e["name"]
        if name.startswith("$") or "Execute" in name or "Pjit" in name or "Handle" in name:
            continue
        total[name] += e.get("dur", 0)
        category[re.sub(r"\.\d+$", "", name)] += e.get("dur", 0)
    print("--- ops (ms/step)")
    for k, v in total.most_common(40):
        print(f"{v / steps / 1e3:9.2f}  {k[:110]}")
    print("--- categories (ms/step)")
    for k, v in category.most_common(25):
        print(f"{v / steps / 1e3:9.2f}  {k}")
    print("loadavg", [round(x, 2) for x in os.getloadavg()], "trace", path)


if __name__ == "__main__":
    main()
