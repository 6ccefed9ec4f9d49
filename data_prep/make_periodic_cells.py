"""Distorted primitive cells of graphene, h-BN and diamond as extended xyz (docs/periodic.md).

    python data_prep/make_periodic_cells.py --system=hbn --n=16 --seed=1 --split=train \
        --ideal_first --out=hbn_train.extxyz

Each frame is a 2-atom primitive cell: graphene (a = 2.46 A) and h-BN (a = 2.50 A) as 2-D
layers (``pbc="T T F"``, a1 = a (1, 0, 0), a2 = a (-1/2, sqrt(3)/2, 0), a3 = (0, 0, 15 A) of
vacuum, atoms at z = 7.5 A), diamond as the primitive fcc cell (a = 3.567 A, a1 = a/2 (0, 1,
1), a2 = a/2 (1, 0, 1), a3 = a/2 (1, 1, 0), atoms at 0 and a/4 (1, 1, 1), ``pbc="T T T"``).
Per frame, with a NumPy generator seeded by ``(seed, crc32(system))``:

* a symmetric strain ``eps`` with components uniform in [-``strain``, +``strain``] (in-plane
  ``xx, yy, xy`` only for the layers, whose vacuum vector is kept; all six for diamond):
  ``cell' = cell (1 + eps)``, atoms follow at fixed fractional coordinates;
* random Cartesian displacements (Gaussian, mean removed, rescaled to a per-atom RMS
  uniform in [``disp_min``, ``disp_max``] A; out-of-plane components included for layers);
* layers only: the E2g optical phonon, atom 0 displaced by ``+u d`` and atom 1 by ``-u d``
  with ``u`` uniform in [0, ``e2g_max``] A and ``d = (cos t, sin t, 0)`` a random in-plane
  direction (applied before the random displacements).

``--ideal_first`` makes frame 0 the ideal cell (no distortion). The comment line records
``system``, ``seed``, ``frame``, ``strain`` (``"xx yy zz yz xz xy"``), ``disp_rms`` (A, the
RMS of the random displacements), ``e2g_amp`` (A) and ``e2g_dir`` (``"dx dy dz"``), and
``split=NAME`` with ``--split``. The output is deterministic (byte-identical for the same
arguments); coordinates are written with 10 decimals.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib

import numpy as np

SYSTEMS = {
    "graphene": {"symbols": ("C", "C"), "a": 2.46, "kind": "layer"},
    "hbn": {"symbols": ("B", "N"), "a": 2.50, "kind": "layer"},
    "diamond": {"symbols": ("C", "C"), "a": 3.567, "kind": "fcc"},
}
VACUUM = 15.0  # Angstrom, length of the layers' third lattice vector


def ideal_cell(system: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """``(symbols, coords [2, 3], cell [3, 3] rows, pbc [3])`` of the undistorted cell."""
    spec = SYSTEMS[system]
    a = spec["a"]
    if spec["kind"] == "layer":
        cell = np.array([[a, 0.0, 0.0], [-a / 2, a * np.sqrt(3) / 2, 0.0], [0.0, 0.0, VACUUM]])
        coords = np.array([[0.0, 0.0, VACUUM / 2], [0.0, a / np.sqrt(3), VACUUM / 2]])
        pbc = np.array([True, True, False])
    else:
        cell = a / 2 * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
        coords = np.array([[0.0, 0.0, 0.0], [a / 4, a / 4, a / 4]])
        pbc = np.array([True, True, True])
    return spec["symbols"], coords, cell, pbc


def make_frames(system: str, n: int, seed: int, *, strain: float = 0.02,
                disp_min: float = 0.03, disp_max: float = 0.05, e2g_max: float = 0.08,
                ideal_first: bool = False) -> list[dict]:
    """The ``n`` distorted frames (module docstring) as dicts with ``symbols``, ``coords``,
    ``cell``, ``pbc``, ``strain`` (symmetric [3, 3]), ``disp`` ([2, 3] random displacements),
    ``disp_rms``, ``e2g_amp``, ``e2g_dir`` ([3]) and ``frame``."""
    if system not in SYSTEMS:
        raise ValueError(f"system {system!r}: use one of {sorted(SYSTEMS)}")
    symbols, coords0, cell0, pbc = ideal_cell(system)
    layer = SYSTEMS[system]["kind"] == "layer"
    rng = np.random.default_rng([int(seed), zlib.crc32(system.encode())])
    frames = []
    for f in range(int(n)):
        # every frame draws the same numbers (so frame f does not depend on --ideal_first)
        comps = rng.uniform(-strain, strain, 6)  # xx yy zz yz xz xy
        raw = rng.normal(size=(2, 3))
        rms_target = rng.uniform(disp_min, disp_max)
        amp = rng.uniform(0.0, e2g_max)
        theta = rng.uniform(0.0, 2 * np.pi)
        eps = np.array([[comps[0], comps[5], comps[4]], [comps[5], comps[1], comps[3]],
                        [comps[4], comps[3], comps[2]]])
        if layer:
            eps[2, :] = eps[:, 2] = 0.0
        direction = np.array([np.cos(theta), np.sin(theta), 0.0])
        if not layer:
            amp = 0.0
        disp = raw - raw.mean(0)
        disp *= rms_target / np.sqrt((disp ** 2).sum(1).mean())
        if ideal_first and f == 0:
            eps, disp, amp, rms_target = np.zeros((3, 3)), np.zeros((2, 3)), 0.0, 0.0
            direction = np.zeros(3)
        deform = np.eye(3) + eps
        cell = cell0 @ deform
        coords = coords0 @ deform  # same fractional coordinates
        coords = coords + amp * np.array([1.0, -1.0])[:, None] * direction + disp
        frames.append({"symbols": symbols, "coords": coords, "cell": cell, "pbc": pbc,
                       "strain": eps, "disp": disp, "disp_rms": float(rms_target),
                       "e2g_amp": float(amp), "e2g_dir": direction if amp else np.zeros(3),
                       "frame": f})
    return frames


def _num(x: float, digits: int = 10) -> str:
    s = f"{x:.{digits}f}"
    return "0." + "0" * digits if s.lstrip("-") == "0." + "0" * digits else s


def format_frames(frames: list[dict], system: str, seed: int, split: str = "") -> str:
    """Extended-xyz text of the frames (``Lattice=`` and explicit ``pbc=``)."""
    lines = []
    for fr in frames:
        e = fr["strain"]
        strain = " ".join(_num(v, 8) for v in (e[0, 0], e[1, 1], e[2, 2], e[1, 2], e[0, 2],
                                               e[0, 1]))
        header = (f'Lattice="{" ".join(_num(v) for v in fr["cell"].reshape(-1))}" '
                  "Properties=species:S:1:pos:R:3 "
                  f'pbc="{" ".join("T" if p else "F" for p in fr["pbc"])}" '
                  f"system={system} seed={int(seed)} frame={fr['frame']} "
                  f'strain="{strain}" disp_rms={_num(fr["disp_rms"], 6)} '
                  f"e2g_amp={_num(fr['e2g_amp'], 6)} "
                  f'e2g_dir="{" ".join(_num(v, 6) for v in fr["e2g_dir"])}"'
                  + (f" split={split}" if split else ""))
        lines += [str(len(fr["symbols"])), header]
        lines += [f"{s} {' '.join(_num(v) for v in r)}" for s, r in zip(fr["symbols"],
                                                                       fr["coords"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--n", type=int, required=True, help="number of frames")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="extended-xyz file to write")
    p.add_argument("--split", default="", help="adds split=NAME to every comment line")
    p.add_argument("--ideal_first", action="store_true", help="frame 0 is the ideal cell")
    p.add_argument("--strain", type=float, default=0.02, help="max |strain component|")
    p.add_argument("--disp_min", type=float, default=0.03, help="min per-atom RMS (A)")
    p.add_argument("--disp_max", type=float, default=0.05, help="max per-atom RMS (A)")
    p.add_argument("--e2g_max", type=float, default=0.08, help="max E2g amplitude (A)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Writes the frames; returns the exit status."""
    a = parse_args(argv)
    frames = make_frames(a.system, a.n, a.seed, strain=a.strain, disp_min=a.disp_min,
                         disp_max=a.disp_max, e2g_max=a.e2g_max, ideal_first=a.ideal_first)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        fh.write(format_frames(frames, a.system, a.seed, a.split))
    print(f"wrote {len(frames)} {a.system} frames to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
