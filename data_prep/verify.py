"""Checks a dataset file: finite, symmetric labels of the right shapes, and its AO convention
and units against PySCF overlaps.

    python data_prep/verify.py --data=schnorb_hamiltonian_water.db [--kind=schnorb] [--n=20]

For the first n structures, reads the record (converted to PySCF order, Angstrom), recomputes
the AO overlap with PySCF in the reader's basis at the record's geometry, and prints the
largest absolute difference from the file's overlap. A correct reader and file agree to
float precision (1e-6 allows for float32 files). On a mismatch it undoes the reader's
conversion and tries the other conventions and bohr/Angstrom mix-ups, naming the one that
fits. Exit status: 0 all agree, 1 a mismatch or unreadable record, 2 nothing to compare
(the file stores no overlap, e.g. OMol_CSH and QH9).
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as `python data_prep/verify.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position

from helm_jax import conventions, units  # pylint: disable=wrong-import-position
from helm_jax.data import geometry, readers  # pylint: disable=wrong-import-position
from helm_jax.data.records import Record  # pylint: disable=wrong-import-position


def pyscf_overlap(rec: Record, basis: str, ecp: str | None) -> np.ndarray:
    """PySCF AO overlap ``[N, N]`` of a record's geometry (Angstrom) in ``basis``."""
    structure = geometry.Structure(elements=rec.elements, coords=rec.coords,
                                   charge=rec.charge, spin=rec.spin, source=rec.key)
    return geometry.build_mole(structure, basis, ecp or "").intor("int1e_ovlp")


def diagnose(ds: readers.Reader, rec: Record, tol: float) -> str:
    """Names the convention or unit error that explains a record's overlap mismatch."""
    z = rec.elements
    stored = conventions.from_pyscf(rec.overlap, z, ds.basis, ds.ecp, ds.convention)
    s_ref = pyscf_overlap(rec, ds.basis, ds.ecp)
    for conv in conventions.CONVENTIONS:
        if conv == ds.convention:
            continue
        if np.abs(conventions.to_pyscf(stored, z, ds.basis, ds.ecp, conv) - s_ref).max() < tol:
            return (f"the file's matrices are in the {conv!r} AO order, but the {ds.kind} "
                    f"reader converts from {ds.convention!r}: wrong convention")
    for factor, unit in ((units.BOHR_ANGSTROM, "bohr"), (1 / units.BOHR_ANGSTROM,
                                                              "Angstrom read as bohr")):
        moved = Record(elements=z, coords=rec.coords * factor, charge=rec.charge, spin=rec.spin)
        if np.abs(rec.overlap - pyscf_overlap(moved, ds.basis, ds.ecp)).max() < tol:
            return f"the geometry matches when the coordinates are taken as {unit}: wrong units"
    return ("no other convention or coordinate unit explains it: another basis (or basis "
            "version), Cartesian instead of spherical AOs, or corrupt matrices")


def verify(ds: readers.Reader, n: int, tol: float = 1e-6) -> int:
    """Checks the first ``n`` records of ``ds``; prints a line per structure.

    Every record must read (the readers check that each label array, Fock (alpha and, for
    spin-resolved labels, beta), overlap, energy, forces and stored targets, is finite and has
    its molecule's shape, and name the dataset that is not); its Fock matrices (``fock`` and
    ``fock_beta``) and overlap must be symmetric to ``tol`` (relative to their largest entry);
    and its overlap must equal PySCF's at its geometry.

    Returns:
      The exit status (0 all agree, 1 an unreadable, non-finite, asymmetric or mismatching
      record, 2 every record passed but the file stores no overlap to compare).
    """
    count = min(n, len(ds))
    print(f"{ds!r}: convention {ds.convention!r}, checking {count} structures")
    worst, failed, compared = 0.0, [], 0
    for i in range(count):
        try:
            rec = ds[i]
        except ValueError as err:
            print(f"FAIL record {i}: {err}")
            failed.append(i)
            continue
        problems = [f"{name} is not symmetric (max|M - M^T| = {asym:.2e})"
                    for name, m in (("fock", rec.fock), ("fock_beta", rec.fock_beta),
                                    ("overlap", rec.overlap))
                    if m is not None
                    and (asym := float(np.abs(m - m.T).max())) > tol * max(1.0, np.abs(m).max())]
        line = f"  {i:5d} key={rec.key} {readers.formula(rec.elements):12s}" + (
            f" 2S={rec.spin} alpha/beta Fock" if rec.fock_beta is not None else "")
        if rec.overlap is not None:
            err = float(np.abs(rec.overlap - pyscf_overlap(rec, ds.basis, ds.ecp)).max())
            worst, compared = max(worst, err), compared + 1
            line += f" max|S - S_pyscf| = {err:.2e}"
            if err > tol:
                problems.append(f"overlap differs from PySCF by {err:.2e} > {tol:g}; likely "
                                f"cause: {diagnose(ds, rec, tol)}")
        print(line)
        if problems:
            print(f"FAIL record {i} (key {rec.key}): " + "; ".join(problems))
            failed.append(i)
    if failed:
        print(f"FAIL: {len(failed)} of {count} structures (records {failed[:10]}"
              f"{' ...' if len(failed) > 10 else ''}); worst overlap error {worst:.2e}")
        return 1
    if not compared:
        print(f"{ds.path}: {count} records finite and symmetric; the file stores no overlap "
              "matrix, so the AO convention was not compared (exit 2)")
        return 2
    print(f"OK: {count} records finite and symmetric; worst max|S - S_pyscf| = {worst:.2e} "
          f"<= {tol:g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset file (or QH9 LMDB directory)")
    p.add_argument("--kind", default=None, choices=readers.KINDS, help="default: detect")
    p.add_argument("--n", type=int, default=20, help="structures to check")
    p.add_argument("--tol", type=float, default=1e-6, help="max abs overlap error allowed")
    args = p.parse_args(argv)
    try:
        ds = readers.open_dataset(args.data, kind=args.kind)
    except (OSError, ValueError) as err:
        print(f"FAIL: cannot open {args.data}: {err}")
        return 1
    return verify(ds, args.n, args.tol)


if __name__ == "__main__":
    sys.exit(main())
