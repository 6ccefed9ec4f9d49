"""Step time and peak memory against molecule size and against l_max, with fitted exponents.

    python benchmarks/scaling.py --sweep atoms --atoms 10 20 40 80 150 --modes forward train
    python benchmarks/scaling.py --sweep lmax --lmax 2 3 4 5 6 --molecule grid20

Each point runs ``benchmarks/step_time.py`` (OMol config) in its own process, pinned to
``--threads`` CPUs. Atom sweep: gridN molecules (edge count ~ N^2 up to the 12 A cutoff).
l_max sweep: one molecule, l_max = m_max from 2 to 6 (the basis template is reduced to the
irreps that fit). Fits ``log t = a + b log x`` by least squares for t = step time and
memory against x = atoms, edges and l_max + 1; prints JSON (points, exponents, machine).
Writes ``--out`` (JSON) and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def fit_exponent(xs, ys) -> float | None:
    """Slope of the least-squares line through ``(log x, log y)`` (None if < 2 points)."""
    import numpy as np
    pts = [(x, y) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return round(float(np.polyfit(lx, ly, 1)[0]), 3)


def main(argv=None):
    """Runs the sweep and prints / writes the points and fitted exponents."""
    import run_all
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sweep", choices=["atoms", "lmax"], default="atoms")
    p.add_argument("--atoms", type=int, nargs="+", default=[10, 20, 40, 80, 150])
    p.add_argument("--lmax", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    p.add_argument("--molecule", default="ethanol", help="molecule of the l_max sweep")
    p.add_argument("--modes", nargs="+", default=["forward", "train"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", default=None, help="JSON path (default results/scaling_<sweep>)")
    args = p.parse_args(argv)
    out_path = args.out or os.path.join(HERE, "results", f"scaling_{args.sweep}.json")
    points = []
    for mode in args.modes:
        xs = args.atoms if args.sweep == "atoms" else args.lmax
        for x in xs:
            if args.sweep == "atoms":
                case = f"--config=omol --molecule=grid{x} --mode={mode}"
            else:
                case = f"--config=omol --molecule={args.molecule} --mode={mode} --l_max={x}"
            r = run_all.run_case(case, args.threads, f"--steps={args.steps}", args.timeout)
            r.update(sweep_x=x, sweep_mode=mode)
            print(json.dumps(r), flush=True)
            points.append(r)
    fits = {}
    for mode in args.modes:
        ok = [r for r in points if r["sweep_mode"] == mode and "error" not in r]
        key = "l_max+1" if args.sweep == "lmax" else "atoms"
        xs = [r["sweep_x"] + (1 if args.sweep == "lmax" else 0) for r in ok]
        fits[mode] = {f"time_vs_{key}": fit_exponent(xs, [r["median_ms"] for r in ok]),
                      f"memory_vs_{key}": fit_exponent(xs, [r["peak_memory_gib"] for r in ok])}
        if args.sweep == "atoms":
            edges = [r["edges"] for r in ok]
            fits[mode]["time_vs_edges"] = fit_exponent(edges, [r["median_ms"] for r in ok])
            fits[mode]["memory_vs_edges"] = fit_exponent(
                edges, [r["peak_memory_gib"] for r in ok])
    result = {"sweep": args.sweep, "machine": run_all.machine(), "threads": args.threads,
              "command": "python benchmarks/scaling.py " + " ".join(argv or sys.argv[1:]),
              "points": points, "exponents": fits}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| mode | x | atoms | edges | median ms | peak GiB | compile s |",
             "|---|---|---|---|---|---|---|"]
    for r in points:
        if "error" in r:
            lines.append(f"| {r['sweep_mode']} | {r['sweep_x']} | failed | | | | |")
            continue
        lines.append(f"| {r['sweep_mode']} | {r['sweep_x']} | {r['atoms']} | {r['edges']} | "
                     f"{r['median_ms']:.0f} | {r['peak_memory_gib']:.2f} | {r['compile_s']:.0f} |")
    lines.append("")
    lines.append(f"Fitted log-log exponents: `{json.dumps(fits)}`")
    with open(os.path.splitext(out_path)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(json.dumps({"exponents": fits, "written": out_path}))


if __name__ == "__main__":
    main()
