"""Every case of the performance issue's reference table, one process per case; prints JSON.

    python benchmarks/run_all.py                       # all cases -> benchmarks/results/cpu.*
    python benchmarks/run_all.py --only md17 --out /tmp/r   # cases whose name contains md17

Each case runs ``benchmarks/step_time.py`` in its own process (so peak RSS belongs to that
case alone) pinned to ``--threads`` CPUs (``os.sched_setaffinity`` in step_time.py, which
XLA:CPU's thread pool follows; ``OMP_NUM_THREADS`` is set to the same number). Writes
``<out>.json`` (machine, load averages, git commit, the command, every case's JSON) and
``<out>.md`` (the table: ours vs the PyTorch reference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (name, step_time.py arguments, reference ms, reference peak GiB) from the table,
# measured on this machine (2 cores, 2 threads) with the public PyTorch reference.
CASES = [
    ("md17 ethanol forward", "--config=md17 --molecule=ethanol --mode=forward", 87, 1.0),
    ("md17 ethanol train", "--config=md17 --molecule=ethanol --mode=train", 446, 1.0),
    ("md17 ethanol train float64",
     "--config=md17 --molecule=ethanol --mode=train --dtype=float64", 783, None),
    ("omol ethanol forward", "--config=omol --molecule=ethanol --mode=forward", 196, 2.1),
    ("omol ethanol train", "--config=omol --molecule=ethanol --mode=train", 1037, 2.1),
    ("omol uracil train", "--config=omol --molecule=uracil --mode=train", 1543, 2.3),
    ("omol grid60 train", "--config=omol --molecule=grid60 --mode=train", 67000, 8.5),
    ("omol grid150 forward", "--config=omol --molecule=grid150 --mode=forward", 122000, None),
    ("omol grid150 train", "--config=omol --molecule=grid150 --mode=train", None, 18.0),
]


def machine() -> dict:
    """CPU model, core count, memory and load averages of this machine."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info


def git_commit() -> str:
    """Short hash of HEAD (``unknown`` outside git)."""
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_case(args: str, threads: int, extra: str, timeout: float) -> dict:
    """Runs step_time.py with ``args`` in a fresh process; its JSON (or an error record)."""
    cmd = [sys.executable, os.path.join(HERE, "step_time.py"), *args.split(),
           f"--threads={threads}", *extra.split()]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s", "command": " ".join(cmd[1:])}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-800:]
        return {"error": f"exit {proc.returncode}: {tail}", "command": " ".join(cmd[1:])}
    out = json.loads(lines[-1])
    out["command"] = "python " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                                          for c in cmd[1:])
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def markdown(results: list[dict], meta: dict) -> str:
    """The reference-vs-ours table (markdown) of ``results`` with the run's ``meta``."""
    m = meta["machine"]
    lines = [f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} cores, {m.get('mem_gib')} GiB; "
             f"{meta['threads']} threads; load average before {meta['loadavg_before']}, "
             f"after {meta['loadavg_after']}; commit {meta['commit']}; `{meta['command']}`.", "",
             "| case | ours: median (min-max) ms | reference ms | speed-up | ours peak GiB | "
             "reference peak GiB | compile s | steps | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ref_ms, ref_mem = r["reference_ms"], r["reference_peak_gib"]
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error'][:80]} | {ref_ms or '-'} | - | - | "
                         f"{ref_mem or '-'} | - | - | - |")
            continue
        speed = f"{ref_ms / r['median_ms']:.2f}x" if ref_ms else "-"
        steps = r["steps"] if r["steps"] >= 5 else f"{r['steps']} (reduced)"
        lines.append(
            f"| {r['case']} | {r['median_ms']:.0f} ({r['min_ms']:.0f}-{r['max_ms']:.0f}) | "
            f"{ref_ms or '-'} | {speed} | {r['peak_memory_gib']:.2f} | {ref_mem or '-'} | "
            f"{r['compile_s']:.0f} | {steps} | {r.get('loadavg', ['?'])[0]} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs the selected cases and writes the JSON and markdown files."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="run the cases whose name contains this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra", default="", help="more step_time.py arguments for every case")
    p.add_argument("--grid150_steps", type=int, default=5, help="timed steps of grid150 cases")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    p.add_argument("--out", default=os.path.join(HERE, "results", "cpu"),
                   help="output path without extension (.json and .md are written)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other cases already in <out>.json (replace re-run ones)")
    args = p.parse_args(argv)
    meta = {"machine": machine(), "threads": args.threads, "commit": git_commit(),
            "command": "python benchmarks/run_all.py " + " ".join(argv or sys.argv[1:]),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    results = []
    for name, case_args, ref_ms, ref_mem in CASES:
        if args.only not in name:
            continue
        extra = args.extra
        if "grid150" in name:
            extra += f" --steps={args.grid150_steps}"
        r = run_case(case_args, args.threads, extra, args.timeout)
        r.update(case=name, reference_ms=ref_ms, reference_peak_gib=ref_mem)
        print(json.dumps(r), flush=True)
        results.append(r)
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.merge and os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            old = json.load(f)
        done = {r["case"] for r in results}
        kept = [r for r in old["results"] if r["case"] not in done]
        order = [c[0] for c in CASES]
        results = sorted(kept + results, key=lambda r: order.index(r["case"]))
        meta["runs"] = old["meta"].get("runs", [old["meta"]]) + [dict(meta)]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(results, meta))
    print(json.dumps({"meta": meta, "written": [args.out + ".json", args.out + ".md"]}))


if __name__ == "__main__":
    main()
