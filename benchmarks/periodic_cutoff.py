"""How the graph cutoff bounds band accuracy: exact labels truncated to pairs within r_c.

    python benchmarks/periodic_cutoff.py --data=hbn_test.h5 --cutoffs=5,6,7,8,9,10

For each structure of a periodic label file (``data_prep/label.py --kmesh=...``), the stored
H(T) blocks of pairs closer than the cutoff (the edges a model with that cutoff predicts;
the rest set to zero) are Bloch-summed on the labels' k-mesh with the full S(k), and their
bands compared with the labels' own (the SCF's) over the valence and the two lowest
conduction bands. This is what a perfect model with that cutoff reaches (docs/periodic.md,
"Results").
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helm_jax import orbitals, units  # noqa: E402
from helm_jax.data import periodic, readers  # noqa: E402


def truncation_errors(record, cutoffs, conduction_bands: int = 2) -> dict[float, np.ndarray]:
    """``{cutoff: |band error| [K, n_occ + conduction_bands]}`` (Eh) of one structure."""
    labels = record.periodic
    kpts = periodic.mp_kpts(labels.kmesh)
    s_k = periodic.labels_to_k(labels, kpts, "overlap")
    ref = periodic.bands(periodic.labels_to_k(labels, kpts, "fock"), s_k, orbitals.S_THRESHOLD)
    n = labels.n_electrons // 2 + conduction_bands
    vec = (record.coords[labels.pairs[:, 1]] + labels.translations @ record.cell
           - record.coords[labels.pairs[:, 0]])
    dist = np.linalg.norm(vec, axis=1)
    out = {}
    for cut in cutoffs:
        weight = np.where(dist < cut, labels.weight, 0.0)
        t, mats = periodic.assemble_translations(
            labels.pairs[:, 0], labels.pairs[:, 1], labels.translations, labels.fock_blocks,
            labels.block_offsets, labels.n_ao_per_atom, weight)
        e = periodic.bands(periodic.bloch_sum(mats, t, kpts), s_k, orbitals.S_THRESHOLD)
        out[cut] = np.abs(e[:, :n] - ref[:, :n])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="periodic HDF5 label file")
    p.add_argument("--cutoffs", default="5,6,7,8,9,10", help="Angstrom, comma-separated")
    args = p.parse_args()
    cutoffs = [float(c) for c in args.cutoffs.split(",")]
    ds = readers.open_dataset(args.data, periodic=True)
    errs = {c: [] for c in cutoffs}
    for i in range(len(ds)):
        for c, e in truncation_errors(ds[i], cutoffs).items():
            errs[c].append(e)
    print(f"{args.data}: {len(ds)} structures; band error of labels truncated to the cutoff "
          "(valence + 2 conduction bands, labels' k-mesh), meV")
    print("cutoff_A  mean      max")
    for c in cutoffs:
        e = np.concatenate([x.ravel() for x in errs[c]]) * units.HARTREE_MEV
        print(f"{c:7.1f}  {e.mean():8.3f}  {e.max():9.3f}")


if __name__ == "__main__":
    main()
