"""Generate the geometries of helm_jax's embedded default dataset.

The embedded dataset is a small, element-diverse set of closed-shell molecules
(3-10 atoms) that ships inside the package as one extended-xyz file
(``helm_jax/data/embedded/molecules.extxyz``).  It only holds geometries; the
PBE/def2-TZVPD Kohn-Sham labels (Fock and overlap matrices) are computed from it
by the labelling pipeline.

Every molecule gets ``n_conformers`` frames (at least 3):

* conformer 0: the reference geometry, built from experimental (or, where no
  gas-phase experiment exists, typical computed) bond lengths and angles;
* conformers 1 .. n-2: the reference with seeded random Cartesian displacements
  whose per-atom RMS amplitude is drawn uniformly from 0.03-0.08 Angstrom;
* conformer n-1: a displaced geometry (same recipe) that is additionally
  rotated by a uniformly random rotation about its centroid, which exercises
  rotational equivariance.

Each frame's ``info`` holds ``name``, ``conformer``, ``charge``, ``spin``
(2S, as in PySCF), ``kind`` (``reference``/``displaced``/``rotated``) and
``disp_rms`` (the RMS displacement in Angstrom from the reference, before any
rotation).

Usage::

    python data_prep/make_embedded_geometries.py \
        --out helm_jax/data/embedded/molecules.extxyz
    python data_prep/make_embedded_geometries.py --set=open_shell   # open_shell.extxyz
    OMP_NUM_THREADS=1 python data_prep/make_embedded_geometries.py --time [--set=open_shell]

``--time`` runs one PBE/def2-TZVPD (density-fitted, default grids) single point
per molecule on the reference geometry, checks convergence and the HOMO-LUMO
gap, and prints the wall time (SCF plus Fock and overlap) per molecule and the
estimated labelling time of the whole set.  It needs PySCF; plain generation
only needs NumPy and ASE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

import numpy as np
from ase import Atoms
from ase.build import molecule as g2_molecule
from ase.data import atomic_numbers
from ase.io import write

if __package__ in (None, ""):  # run as `python data_prep/make_embedded_geometries.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.embedded_molecules import (  # pylint: disable=wrong-import-position
    MOLECULES, OPEN_SHELL, MoleculeSpec)

DEFAULT_SEED = 20240611
# --set name -> (molecule table, shipped output file)
SETS = {"closed_shell": (MOLECULES, "helm_jax/data/embedded/molecules.extxyz"),
        "open_shell": (OPEN_SHELL, "helm_jax/data/embedded/open_shell.extxyz")}
DISP_RMS_RANGE = (0.03, 0.08)  # per-atom RMS displacement, Angstrom
MIN_DISTANCE = 0.55  # sanity bound on interatomic distances, Angstrom
# OMol_CSH element set: Z 1-20, 31-56, 72-83.
OMOL_CSH_Z = set(range(1, 21)) | set(range(31, 57)) | set(range(72, 84))


# --------------------------------------------------------------------------
# Conformer generation
# --------------------------------------------------------------------------


def _rng_for(name: str, seed: int) -> np.random.Generator:
    """Returns a generator that depends only on the seed and molecule name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Draws a uniformly random proper rotation matrix (via a unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _displace(pos: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Adds a random displacement with per-atom RMS drawn from DISP_RMS_RANGE."""
    target = rng.uniform(*DISP_RMS_RANGE)
    d = rng.normal(size=pos.shape)
    d *= target / np.sqrt(np.mean(np.sum(d**2, axis=1)))
    return pos + d, float(target)


def _check(atoms: Atoms, spec: MoleculeSpec) -> None:
    """Validates element set, size, electron parity and interatomic distances."""
    zs = atoms.get_atomic_numbers()
    if not 3 <= len(atoms) <= 20:
        raise ValueError(f"{spec.name}: {len(atoms)} atoms, expected 3-20")
    if not set(zs.tolist()) <= OMOL_CSH_Z:
        raise ValueError(f"{spec.name}: element outside the OMol_CSH set")
    # ECP cores (def2: 28, 46, 60 electrons) are even, so parity of the full
    # electron count decides whether a closed shell is possible.
    if (int(zs.sum()) - spec.charge - spec.spin) % 2:
        raise ValueError(f"{spec.name}: odd electron count")
    dist = atoms.get_all_distances()
    dist[np.diag_indices_from(dist)] = np.inf
    if dist.min() < MIN_DISTANCE:
        raise ValueError(f"{spec.name}: atoms closer than {MIN_DISTANCE} A")


def make_conformers(spec: MoleculeSpec, seed: int = DEFAULT_SEED) -> list[Atoms]:
    """Generates all frames of one molecule.

    Args:
        spec: The molecule.
        seed: Global seed; each molecule's stream is derived from it and the
            molecule name, so adding molecules does not change the others.

    Returns:
        ``spec.n_conformers`` frames: reference, displaced ones, and a final
        displaced-and-rotated one, each with its ``info`` filled in.
    """
    if spec.n_conformers < 3:
        raise ValueError(f"{spec.name}: need at least 3 conformers")
    ref = spec.build()
    ref.positions -= ref.positions.mean(axis=0)
    ref.info.clear()
    rng = _rng_for(spec.name, seed)
    frames = []
    for k in range(spec.n_conformers):
        at = Atoms(ref.get_chemical_symbols(), positions=ref.positions.copy())
        kind, rms = "reference", 0.0
        if k > 0:
            at.positions, rms = _displace(ref.positions, rng)
            kind = "displaced"
            if k == spec.n_conformers - 1:
                rot = _random_rotation(rng)
                center = at.positions.mean(axis=0)
                at.positions = (at.positions - center) @ rot.T + center
                kind = "rotated"
        at.positions = np.round(at.positions, 6)
        at.info.update(name=spec.name, conformer=k, charge=spec.charge,
                       spin=spec.spin, kind=kind, disp_rms=round(rms, 4))
        _check(at, spec)
        frames.append(at)
    return frames


def make_all(seed: int = DEFAULT_SEED,
             molecules: list[MoleculeSpec] | None = None) -> list[Atoms]:
    """Generates the frames of every molecule, molecule by molecule.

    Args:
        seed: Global seed.
        molecules: Molecule table; defaults to ``MOLECULES``.

    Returns:
        The list of frames.
    """
    molecules = MOLECULES if molecules is None else molecules
    names = [m.name for m in molecules]
    if len(set(names)) != len(names):
        raise ValueError("duplicate molecule names")
    frames = []
    for spec in molecules:
        frames.extend(make_conformers(spec, seed))
    return frames


def summary(frames: list[Atoms]) -> dict:
    """Counts molecules, frames, atoms and elements of a frame list.

    Args:
        frames: Frames as produced by ``make_all``.

    Returns:
        A JSON-serialisable dict of counts and the element list.
    """
    zs = sorted({int(z) for f in frames for z in f.get_atomic_numbers()})
    from ase.data import chemical_symbols
    return {
        "n_molecules": len({f.info["name"] for f in frames}),
        "n_frames": len(frames),
        "n_atoms": int(sum(len(f) for f in frames)),
        "n_elements": len(zs),
        "elements": [chemical_symbols[z] for z in zs],
        "elements_beyond_Kr": [chemical_symbols[z] for z in zs if z > 36],
    }


# --------------------------------------------------------------------------
# Timing / verification with PySCF
# --------------------------------------------------------------------------


def single_point(atoms: Atoms, charge: int = 0, spin: int = 0,
                 xc: str = "PBE", basis: str = "def2-tzvpd") -> dict:
    """Runs one labelling-style single point and times it.

    Builds the molecule with ``basis`` and the matching ECPs (applied to
    Z > 36, exactly what ``ecp='def2-tzvpd'`` selects), runs density-fitted RKS
    with default grids, and evaluates the Fock and overlap matrices.

    Args:
        atoms: Geometry in Angstrom.
        charge: Total charge.
        spin: 2S.
        xc: Exchange-correlation functional.
        basis: Orbital basis (and ECP) name.

    Returns:
        Dict with wall time in seconds, convergence flag, energy, HOMO-LUMO
        gap (Hartree), number of AOs and electrons.
    """
    from pyscf import dft, gto

    symbols = atoms.get_chemical_symbols()
    ecp = {s: basis for s in set(symbols) if atomic_numbers[s] > 36}
    t0 = time.perf_counter()
    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, atoms.positions)],
                unit="Angstrom", basis=basis, ecp=ecp or None, charge=charge,
                spin=spin, verbose=0)
    mf = (dft.UKS if spin else dft.RKS)(mol, xc=xc).density_fit()
    energy = mf.kernel()
    fock = mf.get_fock()
    ovlp = mf.get_ovlp()
    wall = time.perf_counter() - t0
    if spin:  # HOMO over both spins, LUMO over both spins
        na, nb = mol.nelec
        ea, eb = (np.sort(e) for e in mf.mo_energy)
        homo = max(ea[na - 1], eb[nb - 1]) if nb else ea[na - 1]
        gap = min(ea[na], eb[nb]) - homo
    else:
        nocc = mol.nelectron // 2
        e = np.sort(mf.mo_energy)
        gap = e[nocc] - e[nocc - 1]
    return {
        "time_s": round(wall, 2),
        "converged": bool(mf.converged),
        "energy": float(energy),
        "gap": float(gap),
        "nao": int(mol.nao),
        "nelectron": int(mol.nelectron),
        "fock_shape": list(fock.shape),
        "ovlp_shape": list(ovlp.shape),
    }


def time_all(molecules: list[MoleculeSpec], threads: int, workers: int,
             only: list[str] | None = None, all_frames: bool = False,
             seed: int = DEFAULT_SEED) -> list[dict]:
    """Times and verifies single points, molecule by molecule.

    Args:
        molecules: Molecule table.
        threads: OpenMP threads for PySCF (set OMP_NUM_THREADS too).
        workers: Number of parallel labelling workers assumed for the estimate.
        only: Optional subset of molecule names.
        all_frames: If True, label every generated frame (a full dry run of
            the labelling cost); otherwise only the reference geometry, whose
            time is multiplied by ``n_conformers`` for the estimate.
        seed: Global seed for the frames when ``all_frames`` is set.

    Returns:
        One result dict per molecule (also printed as a table).
    """
    from pyscf import lib

    lib.num_threads(threads)
    # Warm-up so that library loading is not charged to the first molecule.
    single_point(g2_molecule("H2O"), basis="sto-3g")
    results = []
    for spec in molecules:
        if only and spec.name not in only:
            continue
        frames = make_conformers(spec, seed) if all_frames else [spec.build()]
        runs = [single_point(f, spec.charge, spec.spin) for f in frames]
        times = [r["time_s"] for r in runs]
        res = dict(runs[0])
        res.update(name=spec.name, formula=frames[0].get_chemical_formula(),
                   n_conformers=spec.n_conformers,
                   converged=all(r["converged"] for r in runs),
                   gap=min(r["gap"] for r in runs),
                   time_s=round(float(np.mean(times)), 2),
                   frame_times_s=times,
                   cost_s=round(sum(times) if all_frames
                                else times[0] * spec.n_conformers, 2))
        results.append(res)
        ok = res["converged"] and res["gap"] > 0.02
        print(f"{spec.name:22s} {res['formula']:8s} nao={res['nao']:4d} "
              f"t={res['time_s']:6.2f}s conv={res['converged']} "
              f"gap={res['gap']:.3f} nconf={spec.n_conformers} "
              f"cost={res['cost_s']:6.1f}s {'OK' if ok else 'FAIL'}",
              flush=True)
    total = sum(r["cost_s"] for r in results)
    print(f"sum of single-thread labelling times = {total:.1f} s; "
          f"estimated wall on {workers} workers = {total / workers:.1f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=sorted(SETS), default="closed_shell",
                   help="molecule table: the closed-shell default set or the "
                        "open-shell and charged species")
    p.add_argument("--out", default=None,
                   help="output extended-xyz path (default: the set's shipped file)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--time", action="store_true",
                   help="time/verify PBE/def2-TZVPD single points instead of "
                        "writing geometries")
    p.add_argument("--only", nargs="*", help="molecule names for --time")
    p.add_argument("--all-frames", action="store_true",
                   help="with --time, label every frame, not only references")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="write --time results to this JSON file")
    args = p.parse_args(argv)

    table, default_out = SETS[args.set]
    if args.time:
        results = time_all(table, args.threads, args.workers, args.only,
                           args.all_frames, args.seed)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)
        bad = [r["name"] for r in results
               if not (r["converged"] and r["gap"] > 0.02)]
        if bad:
            print("FAILED:", bad)
        return 1 if bad else 0

    frames = make_all(args.seed, table)
    write(args.out or default_out, frames, format="extxyz")
    print(json.dumps(summary(frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
