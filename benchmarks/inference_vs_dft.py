"""Time to predict H with the model vs PySCF's SCF time, same molecule and level; JSON.

    python benchmarks/inference_vs_dft.py                    # MD17 config, PBE/def2-SVP
    python benchmarks/inference_vs_dft.py --molecules ethanol uracil water

The model is the MD17 configuration (l_max 4, def2-SVP template, random weights: the time
does not depend on the values) behind :class:`helm_jax.predict.Predictor`, timed end to
end per molecule (graph building, padded batch, jitted forward, assembly of the full
symmetric H in PySCF AO order), median of ``--repeats`` calls after a warm-up call (the
compile, once per size class, is reported separately). PySCF: ``labelling.make_scf`` at
PBE/def2-SVP (the MD17 labels' level), default grids, from the default initial guess,
one run per molecule. Both use ``--threads`` threads (affinity + ``pyscf.lib.num_threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import step_time  # noqa: E402


def atoms_of(name: str):
    """An ``ase.Atoms``: the shipped rMD17 frames (ethanol, uracil) or ``ase.build.molecule``."""
    import ase.build
    import ase.io
    path = os.path.join(HERE, f"{name}_frame0.xyz")
    if os.path.exists(path):
        atoms = ase.io.read(path)
        atoms.pbc = False  # the rMD17 extxyz frames carry a cell; these are molecules
        return atoms
    return ase.build.molecule(name)


def main(argv=None):
    """Times both for every molecule; prints (and returns) one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", nargs="+",
                   default=["H2O", "CH3CH2OH", "ethanol", "uracil", "C6H6"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "inference_vs_dft.json"))
    args = p.parse_args(argv)
    step_time.pin_threads(args.threads)
    import jax
    import numpy as np
    import pyscf
    from helm_jax import checkpoint as ckpt_lib
    from helm_jax.data import labelling, statistics
    from helm_jax.model import helm
    from helm_jax.predict import Predictor
    from helm_jax.data.records import Record

    pyscf.lib.num_threads(args.threads)
    c, template = step_time.setup("md17", "float32")
    spec_model = helm.build_model(c, template)
    from helm_jax.data import batching, graphs
    z, pos = step_time.molecule("ethanol")
    g = graphs.build_graph(Record(elements=z, coords=pos),
                           graphs.GraphSpec(template, float(c.model.cutoff)), with_labels=False)
    batch = batching.pad_batch([g], batching.Budget(g.n_node + 1, g.n_edge, 2), None, None,
                               np.float32)
    inputs = helm.batch_inputs(batch)
    num_graphs = inputs.pop("num_graphs")
    params = jax.jit(lambda r, i: spec_model.init(r, **i, num_graphs=num_graphs))(
        jax.random.PRNGKey(0), inputs)["params"]
    mul0 = graphs.layouts_for(template, c.heads.reduced_nodes)[0].muls[0]
    stats = statistics.Statistics(node_mean=np.zeros((119, mul0)), node_std=np.ones((119, mul0)),
                                  energy_ref=np.zeros(119), energy_std=1.0, n_molecules=0)
    predictor = Predictor(ckpt_lib.LoadedModel(config=c, template=template, stats=stats,
                                               params=params, step=0, meta={}))
    level = labelling.LevelOfTheory(method="pbe", basis="def2-svp", ecp="")
    rows = []
    for name in args.molecules:
        atoms = atoms_of(name)
        t0 = time.perf_counter()
        h = predictor.predict_hamiltonian(atoms)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            h = predictor.predict_hamiltonian(atoms)
            times.append(time.perf_counter() - t0)
        mol = pyscf.gto.M(atom=[(int(zz), xyz) for zz, xyz in
                                zip(atoms.numbers, atoms.positions)],
                          basis=level.basis, unit="Angstrom", verbose=0)
        mf = labelling.make_scf(mol, level)
        t0 = time.perf_counter()
        mf.kernel()
        scf_s = time.perf_counter() - t0
        pred_s = float(np.median(times))
        rows.append({"molecule": name, "atoms": len(atoms), "n_ao": int(mol.nao),
                     "h_shape": list(h.shape), "predict_ms": round(1e3 * pred_s, 1),
                     "predict_min_ms": round(1e3 * min(times), 1),
                     "first_call_s": round(first, 2), "scf_s": round(scf_s, 2),
                     "scf_cycles": int(getattr(mf, "cycles", -1)), "converged": bool(mf.converged),
                     "speedup": round(scf_s / pred_s, 1),
                     "loadavg": [round(x, 2) for x in os.getloadavg()]})
        print(json.dumps(rows[-1]), flush=True)
    out = {"config": "md17 (l_max 4, C 128, 3 layers, def2-SVP template), float32",
           "level": "PBE/def2-SVP", "threads": args.threads,
           "compilations": predictor.num_compilations, "molecules": rows,
           "median_speedup": float(np.median([r["speedup"] for r in rows])),
           "loadavg": [round(x, 2) for x in os.getloadavg()]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "molecules"}))
    return out


if __name__ == "__main__":
    main()
