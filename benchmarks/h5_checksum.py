"""Cost of the per-structure checksums of the project HDF5 format (write and read).

    python benchmarks/h5_checksum.py                     # 72x72 (ethanol def2-SVP) and 500x500
    python benchmarks/h5_checksum.py --sizes 72 --n 200 --repeats 9

For each AO count N, writes `--n` structures (9 atoms, forces, Fock and overlap N x N, as
`helm_jax.data.labelling` writes them) into a fresh file with and without checksums, then
reads them all back with `H5Dataset` with and without verification (the file is in the page
cache: this is the CPU cost, not the disk's). Prints milliseconds per structure, median and
[min, max] over `--repeats`, with and without checksums side by side. The two variants
alternate within each repeat so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helm_jax.data import h5format  # noqa: E402  pylint: disable=wrong-import-position

ETHANOL = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1], np.int32)


def _structures(nao: int, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.normal(size=(nao, nao))
        out.append(dict(elements=ETHANOL, coords=rng.normal(size=(9, 3)), fock=a + a.T,
                        overlap=a @ a.T, energy=-155.0 - rng.random(), charge=0, spin=0,
                        n_electrons=26, converged=True, scf_cycles=12, source=f"bench:{i}",
                        forces=rng.normal(size=(9, 3))))
    return out


def _write(path: str, structures: list[dict], checksums: bool) -> float:
    """Seconds per structure to write them all (file attrs excluded)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = h5format.FORMAT
        f.attrs["basis"] = "def2-svp"
        start = time.perf_counter()
        for i, s in enumerate(structures):
            h5format.write_structure(f, h5format.group_key(i), checksums=checksums, **s)
        f.flush()
        return (time.perf_counter() - start) / len(structures)


def _read(path: str, verify: bool) -> float:
    """Seconds per structure to read them all."""
    with h5format.H5Dataset(path, verify=verify) as ds:
        ds[0]  # pylint: disable=pointless-statement  # opens the handle
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[i]  # pylint: disable=pointless-statement
        return (time.perf_counter() - start) / len(ds)


def _fmt(values: list[float]) -> str:
    ms = np.array(values) * 1e3
    return f"{np.median(ms):7.3f} [{ms.min():.3f}, {ms.max():.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[72, 500], help="AO counts N")
    parser.add_argument("--n", type=int, default=50, help="structures per file")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"ms per structure, median [min, max] over {args.repeats} repeats of {args.n} "
          "structures")
    print(f"{'N':>5} {'op':>6} {'without checksums':>28} {'with checksums':>28} {'overhead':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for nao in args.sizes:
            structures = _structures(nao, args.n)
            times = {k: [] for k in ("write0", "write1", "read0", "read1")}
            for r in range(args.repeats):
                for on in ((False, True) if r % 2 == 0 else (True, False)):
                    path = os.path.join(tmp, f"{nao}_{int(on)}.h5")
                    times[f"write{int(on)}"].append(_write(path, structures, on))
                for on in ((False, True) if r % 2 == 0 else (True, False)):
                    times[f"read{int(on)}"].append(_read(os.path.join(tmp, f"{nao}_1.h5"), on))
            for op in ("write", "read"):
                off, on = times[op + "0"], times[op + "1"]
                extra = np.median(on) / np.median(off) - 1
                print(f"{nao:>5} {op:>6} {_fmt(off):>28} {_fmt(on):>28} {extra:>+8.1%}")


if __name__ == "__main__":
    main()
