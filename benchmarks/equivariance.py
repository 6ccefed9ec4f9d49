"""Measured equivariance errors of the full HELM model at the paper configurations; prints JSON.

    python benchmarks/equivariance.py --config=md17 --dtype=float32
    python benchmarks/equivariance.py --config=omol --dtype=float64

For ethanol (first rMD17 frame), a random rotation R and a rotation that puts the C-C bond
exactly on e3nn's polar axis (y): the relative error ``max|H(R) - D H D^T| / max|H|`` of the
assembled predicted Hamiltonian (PySCF AO order, D from ``helm_jax.sph``), the energy
difference, and ``max|F(R) - F R^T|`` of the forces. Randomly initialised parameters (the
symmetry holds for any parameters).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main(argv=None):
    """Prints the relative equivariance errors of the full model (JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=["md17", "omol"], default="md17")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args(argv)
    import jax
    import numpy as np
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import step_time
    from helm_jax import sph
    from helm_jax.data import batching, graphs
    from helm_jax.data.records import Record
    from helm_jax.model import assemble, helm

    z, pos = step_time.molecule("ethanol")
    c, template = step_time.setup(args.config, args.dtype)
    model = helm.build_model(c, template)
    spec = graphs.GraphSpec(template, float(c.model.cutoff))
    layouts = graphs.layouts_for(template, reduced_nodes=True)
    dtype = np.dtype(args.dtype)

    def run(coords, params=None):
        """Model outputs (and params) for the molecule at ``coords``."""
        g = graphs.build_graph(Record(elements=z, coords=coords), spec, with_labels=False)
        b = batching.pad_batch([g], batching.Budget(g.n_node + 1, g.n_edge, 2), None, None,
                               dtype)
        inputs = helm.batch_inputs(b)
        if params is None:
            ng = inputs.pop("num_graphs")
            params = jax.jit(lambda r, i: model.init(r, **i, num_graphs=ng))(
                jax.random.PRNGKey(0), inputs)["params"]
            inputs["num_graphs"] = ng
        out = jax.device_get(model.apply({"params": params}, **inputs))
        e, f = helm.energy_and_forces(model, params, inputs)
        h = assemble.batch_to_full(out, b, *layouts, None)[0]
        return params, h, float(e[0]), np.asarray(f)[: len(z)]

    params, h0, e0, f0 = run(pos)
    shell_ls = [l for zi in z for l in template.element(int(zi)).shell_l]
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import molecules
    rotations = {"random": molecules.random_rotation(0),
                 "bond_on_polar_axis": molecules.rotation_onto(pos[1] - pos[0],
                                                               np.array([0.0, 1.0, 0.0]))}
    result = {"config": args.config, "dtype": args.dtype, "params": helm.count_params(params)}
    for name, rot in rotations.items():
        _, h1, e1, f1 = run(pos @ rot.T, params)
        d = sph.molecule_ao_wigner(shell_ls, rot)
        result[name] = {
            "h_rel_error": float(np.abs(h1 - d @ h0 @ d.T).max() / np.abs(h0).max()),
            "energy_abs_error_eh": abs(e1 - e0),
            "forces_max_error": float(np.abs(f1 - f0 @ rot.T).max()),
            "forces_max": float(np.abs(f0).max())}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
