"""Checks PySCF labels against the ORCA energies and forces of an rMD17 extended-xyz file.

    python -m data_prep.check_rmd17 --xyz=../shared/data/rmd17/ethanol_train_01.xyz --frames=10

Labels the first K frames with the labeller's `label_structure` (default PBE/def2-SVP,
grid level 5, conv_tol 1e-11, the rMD17 level of theory) and prints per-frame energy
differences (meV), their mean offset, the largest deviation from that offset, and the
force MAE (meV/Angstrom). The file holds energies in eV (`Energy=` header key) and forces
in eV/Angstrom. Exit status 0 if every frame is within the targets, else 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as `python data_prep/check_rmd17.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position

from helm_jax.data import labelling  # pylint: disable=wrong-import-position
from helm_jax.data import geometry  # pylint: disable=wrong-import-position
from helm_jax.units import HARTREE_EV  # pylint: disable=wrong-import-position

ENERGY_TARGET_MEV = 15.0  # |E_pyscf - E_orca| per frame
FORCE_TARGET_MEV_A = 3.0  # force MAE
DEFAULT_XYZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                           "shared", "data", "rmd17", "ethanol_train_01.xyz")
RMD17_LEVEL = labelling.LevelOfTheory(method="pbe", basis="def2-svp", grid_level=5, conv_tol=1e-11)


def read_reference(path: str, frames: int) -> list[tuple[float, np.ndarray]]:
    """ORCA reference (energy eV, forces eV/Angstrom [n, 3]) of the first `frames` frames."""
    import ase.io  # pylint: disable=import-outside-toplevel

    return [(float(a.info["Energy"]), np.asarray(a.get_forces(), np.float64))
            for a in ase.io.read(path, index=f":{frames}")]


def compare(path: str, frames: int, level: labelling.LevelOfTheory = RMD17_LEVEL,
            verbose: bool = True) -> dict[str, np.ndarray]:
    """Labels the first `frames` frames of `path` and compares with the file's labels.

    Args:
        path: rMD17 extended-xyz file.
        frames: number of frames K from the start.
        level: level of theory of the PySCF labels.
        verbose: print one line per frame as it finishes.

    Returns:
        dict with "energy_diff_mev" [K] (PySCF - ORCA) and "force_mae_mev_a" [K].
    """
    structures = geometry.read_structures(path)[:frames]
    refs = read_reference(path, frames)
    de, fmae = [], []
    for s, (e_ref, f_ref) in zip(structures, refs):
        t0 = time.time()
        lab = labelling.label_structure(s, level, max_cycle=200, forces=True)
        if not lab.converged:
            raise RuntimeError(f"{s.source}: SCF did not converge")
        de.append((lab.energy * HARTREE_EV - e_ref) * 1e3)
        fmae.append(np.mean(np.abs(lab.forces * HARTREE_EV - f_ref)) * 1e3)
        if verbose:
            print(f"{s.source:>32s}  dE = {de[-1]:+8.3f} meV   force MAE = {fmae[-1]:6.3f} meV/A"
                  f"   ({time.time() - t0:.1f} s)", flush=True)
    return {"energy_diff_mev": np.asarray(de), "force_mae_mev_a": np.asarray(fmae)}


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison and prints the summary. Returns 0 if within targets."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--xyz", default=DEFAULT_XYZ, help="rMD17 extended-xyz file")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--grid_level", type=int, default=RMD17_LEVEL.grid_level)
    p.add_argument("--conv_tol", type=float, default=RMD17_LEVEL.conv_tol)
    p.add_argument("--threads", type=int, default=None, help="PySCF threads")
    a = p.parse_args(argv)
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(labelling.threads_per_worker(1, a.threads))
    level = labelling.LevelOfTheory(method=RMD17_LEVEL.method, basis=RMD17_LEVEL.basis,
                                grid_level=a.grid_level, conv_tol=a.conv_tol)
    t0 = time.time()
    r = compare(a.xyz, a.frames, level)
    de, fmae = r["energy_diff_mev"], r["force_mae_mev_a"]
    offset = float(de.mean())
    ok = bool(np.all(np.abs(de) < ENERGY_TARGET_MEV) and fmae.mean() <= FORCE_TARGET_MEV_A)
    print(f"level: {level}")
    print(f"frames: {len(de)}   time: {time.time() - t0:.1f} s")
    print(f"energy diff (meV): {np.array2string(de, precision=3)}")
    print(f"mean offset: {offset:+.3f} meV   max |dE - offset|: "
          f"{np.max(np.abs(de - offset)):.3f} meV   max |dE|: {np.max(np.abs(de)):.3f} meV")
    print(f"force MAE: {fmae.mean():.3f} meV/A (max per frame {fmae.max():.3f})")
    print(f"targets |dE| < {ENERGY_TARGET_MEV} meV, force MAE <= {FORCE_TARGET_MEV_A} meV/A: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
