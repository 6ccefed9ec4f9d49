"""Graph parallelism against one device, in float64 (run by tests/test_graph_parallel.py in
a subprocess with fake CPU devices; also by hand):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/graph_parallel_check.py

For P = 2, 4, 8 devices on the ``graph`` axis (and a 2 x 2 ``('data', 'graph')`` mesh, and
METIS parts on 4), one molecular batch (a water cluster and an ethanol) and one periodic cell: node and edge H
blocks, energies, forces and the parameter gradients of the training loss (Hamiltonian +
energy + forces, random labels) equal the single-device values. Prints one JSON line of
the largest relative errors (max |a - b| / max |b| per quantity).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

jax.config.update("jax_enable_x64", True)

from helm_jax import basis, graph_parallel, losses, parallel  # noqa: E402
from helm_jax.configs import base  # noqa: E402
from helm_jax.data import batching, graphs  # noqa: E402
from helm_jax.data.records import Record  # noqa: E402
from helm_jax.model import helm  # noqa: E402

NEED = {"hamiltonian", "energy", "forces"}
WEIGHTS = {"hamiltonian": 1.0, "energy": 0.3, "forces": 0.7}


def water_cluster(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` water molecules on a jittered 3.1 A grid, random orientations."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    mol = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    z, xyz = [], []
    for c in grid * 3.1 + rng.normal(scale=0.2, size=(n, 3)):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        z += [8, 1, 1]
        xyz.append(mol @ q.T + c)
    return np.array(z), np.concatenate(xyz)


def with_random_labels(g: graphs.MolGraph, spec: graphs.GraphSpec, seed: int):
    rng = np.random.default_rng(seed)
    return dataclasses.replace(
        g, node_labels=rng.normal(size=(g.n_node, spec.node_layout.dim)) * 0.1,
        edge_labels=rng.normal(size=(g.n_edge, spec.edge_layout.dim)) * 0.01,
        energy=float(rng.normal()), forces=rng.normal(size=(g.n_node, 3)) * 0.1)


def config(cutoff: float, l_max: int):
    c = base.get_config()
    base.tiny_model(c, l_max=l_max)
    c.model.update(channels=8, num_layers=2, m_max=2, num_rbf=8, edge_channels_hidden=8,
                   ffn_channels=8, cutoff=cutoff, dtype="float64", param_dtype="float64")
    c.heads.update(hidden=8, energy_hidden=8)
    return c


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def tree_rel(a, b) -> float:
    return max(rel(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class Case:
    """One batch (or several, for the data axis), its model and single-device reference."""

    def __init__(self, gs_per_device, spec, cfg, periodic: bool):
        self.spec, self.periodic = spec, periodic
        self.model = helm.build_model(cfg, spec.template)
        self.ctx = losses.LossContext.create(spec.node_layout, spec.edge_layout, None)
        budget = batching.Budget(max(sum(g.n_node for g in gs) for gs in gs_per_device) + 3,
                                 max(sum(g.n_edge for g in gs) for gs in gs_per_device) + 5,
                                 max(len(gs) for gs in gs_per_device) + 1)
        self.batches = []
        for gs in gs_per_device:
            self.batches.append(batching.pad_batch(
                gs, budget, spec.node_layout.dim, spec.edge_layout.dim, np.float64,
                periodic=periodic, template=spec.template))
        self.params = self.model.init(jax.random.PRNGKey(0),
                                      **helm.batch_inputs(self.batches[0]))["params"]
        self.loss_fns = {name: losses.resolve(name) for name in WEIGHTS}
        self.reference = {}  # data devices -> run() without graph parallelism

    def run(self, mesh, stacked):
        """Per-device outputs ``[*mesh.shape, ...]``, the loss and its parameter gradient,
        from one ``jit(shard_map(...))`` over ``mesh`` (``stacked``: ``[*mesh.shape, ...]``)."""
        axes = parallel.mesh_axes(mesh)

        def per_device(params, batch):
            batch = jax.tree.map(lambda x: x[(0,) * len(axes)], batch)

            def loss_fn(p):
                out = losses.model_outputs(self.model, p, batch, NEED, self.ctx)
                partials = {k: fn(out, batch, self.ctx) for k, fn in self.loss_fns.items()}
                loss, _ = losses.total_loss(partials, WEIGHTS,
                                            reduce=lambda t: jax.lax.psum(t, axes))
                return loss, out
            (loss, out), grad = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return jax.tree.map(lambda x: x[(None,) * len(axes)], out), loss, grad

        spec = P(*axes)
        mapped = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), spec),
                                       out_specs=(spec, P(), P())))
        return jax.device_get(mapped(parallel.replicate(self.params, mesh),
                                     parallel.shard(stacked, mesh)))


def compare(case: Case, data: int, parts: int, method: str = "bisect") -> dict[str, float]:
    """Errors of a ``data x parts`` mesh against ``data`` devices without graph parallelism
    (one device for ``data = 1``)."""
    pbs = graph_parallel.partition_batches(case.batches[:data], parts, method)
    outs, loss, grad = case.run(parallel.make_mesh(data * parts, graph_devices=parts),
                                graph_parallel.stack_parts(pbs))
    if data not in case.reference:
        case.reference[data] = case.run(parallel.make_mesh(data),
                                        batching.stack_device_batches(case.batches[:data]))
    ref_outs, ref_loss, ref_grad = case.reference[data]
    errs = {}
    for d, (batch, pb) in enumerate(zip(case.batches, pbs)):
        n, e = len(batch.nodes["species"]), len(batch.senders)
        for key, size, back in (("node_h", n, pb.nodes_to_batch),
                                ("forces", n, pb.nodes_to_batch),
                                ("edge_h", e, pb.edges_to_batch)):
            errs[key] = max(errs.get(key, 0.0), rel(back(outs[key][d], size), ref_outs[key][d]))
        for p in range(parts):  # every part holds each structure's whole energy
            errs["energy"] = max(errs.get("energy", 0.0),
                                 rel(outs["energy"][d, p][:-1], ref_outs["energy"][d][:-1]))
    errs["gradients"] = tree_rel(grad, ref_grad)
    errs["loss"] = rel(loss, ref_loss)
    errs["halo_atoms"] = float(np.mean([pb.halo_nodes.mean() for pb in pbs]))
    return errs


def molecular_case() -> Case:
    svp = basis.make_template("HCNO", "sto-3g")
    spec = graphs.GraphSpec(svp, 3.5)
    z, xyz = water_cluster(6)
    eth_z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    eth = np.array([[-0.174, -0.488, 0.019], [-0.986, 0.687, 0.584], [1.068, -0.169, -0.503],
                    [0.167, -1.200, 0.850], [-0.935, -0.923, -0.682], [-1.752, 0.299, 1.284],
                    [-0.207, 1.355, 1.055], [-1.473, 1.174, -0.278], [1.059, -0.402, -1.432]])
    gs = [with_random_labels(graphs.build_graph(Record(elements=zz, coords=xx), spec,
                                                with_labels=False), spec, k)
          for k, (zz, xx) in enumerate([(z, xyz), (eth_z, eth)])]
    z2, xyz2 = water_cluster(4, seed=1)
    g2 = with_random_labels(graphs.build_graph(Record(elements=z2, coords=xyz2), spec,
                                               with_labels=False), spec, 5)
    return Case([gs, [g2]], spec, config(3.5, 2), periodic=False)


def periodic_case() -> Case:
    szv = basis.make_template([5, 7], "gth-szv", "")
    spec = graphs.GraphSpec(szv, 4.0, periodic=True)
    a = 2.5
    cell = np.array([[2 * a, 0, 0], [-a, a * np.sqrt(3), 0], [0, 0, 15.0]])  # 2x2 h-BN
    frac = np.array([[0, 0], [2 / 3, 1 / 3]])
    xyz, z = [], []
    rng = np.random.default_rng(3)
    for i in range(2):
        for j in range(2):
            for k, f in enumerate(frac):
                xy = (np.array([i, j]) + f) / 2 @ cell[:2, :2]
                xyz.append([*xy, 7.5])
                z.append(5 if k == 0 else 7)
    xyz = np.array(xyz) + rng.normal(scale=0.05, size=(8, 3))
    g = graphs.build_graph(Record(elements=np.array(z), coords=xyz, cell=cell,
                                  pbc=np.array([True, True, False])), spec, with_labels=False)
    g = with_random_labels(g, spec, 7)
    g = dataclasses.replace(g, edge_label_mask=np.ones(g.n_edge, bool))
    return Case([[g]], spec, config(4.0, 2), periodic=True)


CASES = {"molecules": [(1, 2, "bisect"), (1, 4, "bisect"), (1, 8, "bisect"),
                       (2, 2, "bisect"), (1, 4, "metis")],
         "periodic": [(1, 2, "bisect"), (1, 4, "bisect"), (1, 4, "metis")]}


def main(which: str = "molecules,periodic") -> None:
    """Prints ``{"<case>_<data>x<parts>": {quantity: relative error}}`` as one JSON line."""
    results = {}
    for name in which.split(","):
        case = molecular_case() if name == "molecules" else periodic_case()
        for data, parts, method in CASES[name]:
            suffix = "" if method == "bisect" else f"_{method}"
            results[f"{name}_{data}x{parts}{suffix}"] = compare(case, data, parts, method)
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
