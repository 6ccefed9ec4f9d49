"""Labels geometries with PySCF into the helm_jax HDF5 format (see helm_jax/data/labelling.py).

    python data_prep/label.py --input=frames.xyz --out=labels.h5 --xc=pbe --basis=def2-svp \
        --grid_level=5 --conv_tol=1e-11 --forces --workers=2

Quantum-chemistry targets (helm_jax/data/reference_targets.py): `--dipole` stores AO dipole integrals
with the reference orbital energies, dipole and polarisability; `--polarizability_ff` adds the
self-consistent finite-field polarisability; `--targets_basis=def2-tzvp` stores the same targets
of a larger basis (reduced-basis learning).

Open shells: a frame with spin 2S != 0 (`--spin`, or `spin=` / `multiplicity=` in its
extended-xyz header; `--charge` / `charge=` for ions) is labelled with UKS (UHF with
`--method=hf`) and stores alpha and beta Fock matrices (`fock`, `fock_beta`);
`--unrestricted` labels every frame, closed shells included, with UKS/UHF.

Periodic structures (frames with `Lattice="..."` and `pbc="T T F"`, or ASE db rows with a
cell and pbc) are labelled with PySCF-PBC k-point SCFs (helm_jax/data/labelling_pbc.py,
docs/periodic.md); `--kmesh` is then required:

    python data_prep/label.py --input=hbn.extxyz --out=hbn.h5 --xc=pbe --kmesh=3,3,1 \
        --pseudo=gth-pbe --basis=gth-dzvp --pbc_cutoff=8 --workers=2

(`--pbc_df=gdf|fftdf`, `--ke_cutoff` (Eh), `--smearing` (Eh), `--method=hf` for KRHF,
`--pseudo=""` with an all-electron basis; `--band_path=60` also stores PySCF's own
`mf.get_bands` along the high-symmetry path, datasets `path_kpts`, `path_bands`). An input file holds molecules or periodic
structures, not both.

Resumable: rerun the same command after an interruption; finished structures are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as `python data_prep/label.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helm_jax.data import geometry, labelling_pbc  # noqa: E402
from helm_jax.data.labelling import LevelOfTheory, Properties, label_file  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="xyz / extended-xyz / ASE .db file")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--method", choices=["dft", "hf", "DFT", "HF"], default="dft")
    p.add_argument("--xc", default="pbe", help="PySCF xc functional (with --method=dft)")
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--ecp", default="", help="PySCF ECP name, e.g. def2-tzvpd")
    p.add_argument("--grid_level", type=int, default=3)
    p.add_argument("--density_fit", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--conv_tol", type=float, default=1e-9)
    p.add_argument("--max_cycle", type=int, default=100)
    p.add_argument("--forces", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--dipole", action=argparse.BooleanOptionalAction, default=False,
                   help="store AO dipole integrals and reference orbital energies, dipole, "
                        "polarisability")
    p.add_argument("--polarizability_ff", action=argparse.BooleanOptionalAction, default=False,
                   help="also the self-consistent finite-field polarisability (6 more SCFs)")
    p.add_argument("--targets_basis", default="",
                   help="larger basis for reduced-basis targets, e.g. def2-tzvp")
    p.add_argument("--charge", type=int, default=0, help="default charge")
    p.add_argument("--spin", type=int, default=None, help="default 2S (n_alpha - n_beta)")
    p.add_argument("--unrestricted", action=argparse.BooleanOptionalAction, default=False,
                   help="UKS/UHF (alpha and beta Fock matrices) for every structure; open "
                        "shells (2S != 0) are always unrestricted")
    p.add_argument("--kmesh", default="",
                   help="periodic input: Monkhorst-Pack mesh NX,NY,NZ (1 along vacuum axes)")
    p.add_argument("--pseudo", default="gth-pbe",
                   help="periodic input: PySCF pseudopotential, '' for all-electron")
    p.add_argument("--pbc_df", choices=list(labelling_pbc.DENSITY_FITS), default="gdf",
                   help="periodic input: Gaussian (gdf) or plane-wave (fftdf) density fitting")
    p.add_argument("--ke_cutoff", type=float, default=0.0,
                   help="periodic input: uniform-grid kinetic-energy cutoff in Eh (0: "
                        "PySCF's default)")
    p.add_argument("--smearing", type=float, default=0.0,
                   help="periodic input: Fermi-Dirac smearing width in Eh (0: none)")
    p.add_argument("--pbc_cutoff", type=float, default=0.0,
                   help="periodic input: store pairs closer than this (Angstrom; 0: all)")
    p.add_argument("--band_path", type=int, default=0,
                   help="periodic input: also store PySCF's mf.get_bands at this many points "
                        "along the high-symmetry path (G-K-M-G for hexagonal layers, "
                        "G-X-W-K-G-L for fcc); 0: off")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="threads per worker")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the labeller; prints the summary as JSON. Returns the exit status."""
    a = parse_args(argv)
    try:
        structures = geometry.read_structures(a.input, a.charge, a.spin)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if any(s.is_periodic for s in structures) or a.kmesh:
        return _main_periodic(a)
    level = LevelOfTheory(method="HF" if a.method.upper() == "HF" else a.xc, basis=a.basis,
                          ecp=a.ecp, grid_level=a.grid_level, density_fit=a.density_fit,
                          conv_tol=a.conv_tol)
    try:
        summary = label_file(a.input, a.out, level, charge=a.charge, spin=a.spin,
                             max_cycle=a.max_cycle, forces=a.forces, workers=a.workers,
                             threads=a.threads, start=a.start, limit=a.limit,
                             progress=not a.no_progress,
                             props=Properties(dipole=a.dipole,
                                              polarizability_ff=a.polarizability_ff,
                                              targets_basis=a.targets_basis),
                             unrestricted=a.unrestricted)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _main_periodic(a: argparse.Namespace) -> int:
    """Periodic input: PySCF-PBC labelling (helm_jax/data/labelling_pbc.py)."""
    try:
        if not a.kmesh:
            raise ValueError(f"{a.input} holds periodic frames: give --kmesh=NX,NY,NZ")
        kmesh = tuple(int(k) for k in a.kmesh.split(","))
        settings = labelling_pbc.PeriodicSettings(
            method="HF" if a.method.upper() == "HF" else a.xc, basis=a.basis,
            pseudo=a.pseudo, kmesh=kmesh, density_fit=a.pbc_df, ke_cutoff=a.ke_cutoff,
            grid_level=a.grid_level, conv_tol=a.conv_tol, smearing=a.smearing,
            pbc_cutoff=a.pbc_cutoff, band_path=a.band_path)
        summary = labelling_pbc.label_file(a.input, a.out, settings, max_cycle=a.max_cycle,
                                           workers=a.workers, threads=a.threads,
                                           start=a.start, limit=a.limit,
                                           progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
