"""Graph parallelism: partitioning on the host, and exactness against one device (fake CPU
devices, float64, in a subprocess: tests/graph_parallel_check.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helm_jax import basis, graph_parallel, parallel
from helm_jax.data import batching, graphs
from helm_jax.data.records import Record
import graph_parallel_check as check

HERE = os.path.dirname(os.path.abspath(__file__))
STO = basis.make_template("HCNO", "sto-3g")


def _batch(n_water=20, cutoff=3.5, extra_graphs=1, labels=True):
    spec = graphs.GraphSpec(STO, cutoff)
    z, xyz = check.water_cluster(n_water)
    g = graphs.build_graph(Record(elements=z, coords=xyz), spec, with_labels=False)
    g = check.with_random_labels(g, spec, 0) if labels else g
    budget = batching.Budget(g.n_node + 2, g.n_edge + 3, 1 + extra_graphs)
    dims = (spec.node_layout.dim, spec.edge_layout.dim) if labels else (None, None)
    return g, batching.pad_batch([g], budget, *dims, np.float64)


def test_bisect_balances_weight_and_is_spatially_compact():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 10, size=(1000, 3)) * np.array([3.0, 1.0, 1.0])  # long in x
    w = rng.integers(1, 20, size=1000).astype(float)
    for parts in (2, 3, 4, 7, 8):
        owner = graph_parallel.bisect(pts, w, parts)
        loads = np.bincount(owner, weights=w, minlength=parts)
        assert set(owner.tolist()) == set(range(parts))
        assert loads.max() / loads.mean() < 1.06, (parts, loads)
    owner = graph_parallel.bisect(pts, w, 2)  # the first cut is across the long axis
    assert pts[owner == 0, 0].max() <= pts[owner == 1, 0].min()
    assert (graph_parallel.bisect(pts[:3], w[:3], 8) < 8).all()  # more parts than points


def test_bucket_rounds_up_to_few_sizes():
    assert [graph_parallel.bucket(n) for n in (1, 7, 8, 9, 100, 1000, 1025)] == [
        1, 7, 8, 9, 104, 1024, 1152]
    sizes = {graph_parallel.bucket(n) for n in range(1000, 2049)}
    assert len(sizes) <= 9
    assert all(graph_parallel.bucket(n) >= n for n in range(1, 3000))


@pytest.mark.parametrize("parts,method", [(1, "bisect"), (2, "bisect"), (3, "bisect"),
                                          (4, "bisect"), (8, "bisect"), (3, "metis"),
                                          (8, "metis")])
def test_partition_owns_every_atom_and_edge_once(parts, method):
    g, b = _batch()
    pb = graph_parallel.partition_batch(b, parts, method=method)
    local = pb.graph
    real_rows = np.flatnonzero(b.nodes["species"] > 0)
    owned = pb.node_rows[pb.node_rows >= 0]
    assert sorted(owned.tolist()) == real_rows.tolist()  # each real atom exactly once
    edges = pb.edge_rows[pb.edge_rows >= 0]
    assert sorted(edges.tolist()) == list(range(g.n_edge))  # each real edge exactly once
    send = local.globals["halo_send"]
    n_own = local.nodes["species"].shape[1] - parts * pb.halo_width
    for p in range(parts):
        rows = pb.node_rows[p]
        # every local edge: the receiver is owned here, the sender is owned or a halo row
        # holding the same atom (checked through the atom's position and species)
        e = pb.edge_rows[p] >= 0
        s_loc, r_loc = local.senders[p][e], local.receivers[p][e]
        assert (r_loc < n_own).all()
        np.testing.assert_array_equal(rows[r_loc], b.receivers[pb.edge_rows[p][e]])
        glob_s = b.senders[pb.edge_rows[p][e]]
        np.testing.assert_array_equal(local.nodes["positions"][p][s_loc],
                                      b.nodes["positions"][glob_s])
        # halo slot (q, k) is what part q sends: its owned row send[q][p, k]
        for q in range(parts):
            slots = n_own + q * pb.halo_width + np.arange(pb.halo_width)
            sent_rows = pb.node_rows[q][send[q][p]]
            real = local.nodes["species"][p][slots] > 0
            np.testing.assert_array_equal(sent_rows[real], _halo_rows(b, pb, p, slots[real]))
            assert (local.nodes["species"][q][send[q][p][~real]] == 0).all()
        # halo rows are in the padding graph and carry no labels
        assert local.n_node[p].sum() == local.nodes["species"].shape[1]
        assert local.n_node[p][:-1].sum() == (rows >= 0).sum()
        assert not local.nodes["forces_mask"][p][n_own:].any()
        assert not local.nodes["h"][p][n_own:].any()
    sent, real = pb.halo_bytes(features=9 * 8)
    assert sent >= real >= 0 and (parts == 1) == (real == 0)


def _halo_rows(b, pb, p, slots):
    """Batch rows of part ``p``'s halo slots, found by position (atoms are distinct)."""
    pos = pb.graph.nodes["positions"][p][slots]
    d = np.linalg.norm(b.nodes["positions"][None] - pos[:, None], axis=-1)
    return np.argmin(d, axis=1)


def test_metis_cuts_fewer_edges_than_bisection_on_a_water_box():
    """METIS (pymetis) minimises the edge cut: on 120 waters in 4 parts its halo is
    smaller than coordinate bisection's, with edges balanced within 5 %."""
    _, b = _batch(n_water=120, labels=False)
    halos = {}
    for method in graph_parallel.PARTITIONERS:
        pb = graph_parallel.partition_batch(b, 4, method=method)
        edges = (pb.edge_rows >= 0).sum(axis=1)
        assert edges.max() / edges.mean() < 1.05, (method, edges)
        halos[method] = pb.halo_nodes.sum()
    assert halos["metis"] < halos["bisect"], halos
    with pytest.raises(ValueError, match="choose one of"):
        graph_parallel.partition_batch(b, 2, method="random")


def test_partition_scatters_outputs_back_in_batch_order():
    g, b = _batch(n_water=10)
    pb = graph_parallel.partition_batch(b, 4)
    local = pb.graph
    n = len(b.nodes["species"])
    np.testing.assert_array_equal(pb.nodes_to_batch(local.nodes["positions"], n)[:g.n_node],
                                  b.nodes["positions"][:g.n_node])
    np.testing.assert_array_equal(pb.edges_to_batch(local.edges["h"], len(b.senders))[:g.n_edge],
                                  b.edges["h"][:g.n_edge])


def test_partition_batches_share_one_shape_and_stack():
    _, b1 = _batch(n_water=10)
    _, b2 = _batch(n_water=6)
    pbs = graph_parallel.partition_batches([b1, b2], 2)
    stacked = graph_parallel.stack_parts(pbs)
    assert stacked.nodes["species"].shape[:2] == (2, 2)
    assert stacked.globals["halo_send"].shape[:3] == (2, 2, 2)
    single = graph_parallel.partition_batch(b2, 2)
    with pytest.raises(ValueError, match="partition_batches"):
        graph_parallel.stack_parts([pbs[0], single])


def test_partition_refuses_what_it_cannot_split():
    _, b = _batch(n_water=3)
    labelled_last = b._replace(globals={**b.globals, "h_mask": np.ones_like(b.globals["h_mask"])})
    with pytest.raises(ValueError, match="padding graph"):  # the halo rows' graph
        graph_parallel.partition_batch(labelled_last, 2)
    with pytest.raises(ValueError, match="at least one device"):
        graph_parallel.partition_batch(b, 0)
    qm = b._replace(globals={**b.globals, "qm": {}})
    with pytest.raises(ValueError, match="graph_devices=1"):
        graph_parallel.partition_batch(qm, 2)


def test_make_mesh_graph_axis_must_divide_devices():
    mesh = parallel.make_mesh(1, graph_devices=1)
    assert mesh.axis_names == ("data",)
    for bad in (0, 2):  # one device: no graph axis of 2
        with pytest.raises(ValueError, match="must divide"):
            parallel.make_mesh(1, graph_devices=bad)


@pytest.mark.parametrize("case", ["molecules", "periodic"])
def test_graph_parallel_equals_one_device(case):
    """P = 2, 4, 8, a 2 x 2 data x graph mesh and METIS parts on 4 for a batch of a water
    cluster and an ethanol; P = 2, 4 and METIS on 4 for a periodic h-BN supercell whose
    image edges cross parts: node and edge H blocks, energies, forces, loss and every
    parameter gradient equal one device to 1e-10 relative (float64; measured ~1e-15)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run([sys.executable, os.path.join(HERE, "graph_parallel_check.py"), case],
                         check=True, capture_output=True, text=True, env=env, timeout=1200)
    results = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {f"{case}_{d}x{p}" + ("" if m == "bisect" else f"_{m}")
                for d, p, m in check.CASES[case]}
    assert set(results) == expected and len(expected) >= 3
    for name, errs in results.items():
        assert errs["halo_atoms"] > 0, name  # the parts really exchange atoms
        for key in ("node_h", "edge_h", "energy", "forces", "gradients", "loss"):
            assert errs[key] < 1e-10, (name, key, errs[key])


TRAIN_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
import trainlib
from helm_jax import train
c = trainlib.tiny_config({data!r}, steps=3)
c.losses = {{"hamiltonian": 1.0, "energy": 0.1, "forces": 1.0}}
c.num_devices = {devices}
c.parallel.graph_devices = {graph}
train.train_and_evaluate(c, {workdir!r})
"""


@pytest.mark.slow
def test_training_with_graph_devices_equals_one_device(tmp_path):
    """``config.parallel.graph_devices=2`` on 2 fake devices (each water split in two, halo
    exchange every layer) trains 3 steps (Hamiltonian + energy + forces) to the parameters
    of one device, and logs the same training losses and evaluation metrics."""
    import trainlib
    data = trainlib.label_water(str(tmp_path / "water_hf.h5"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    runs = {}
    for name, devices, graph in (("one", 1, 1), ("graph2", 2, 2)):
        workdir = str(tmp_path / name)
        script = TRAIN_SCRIPT.format(tests=HERE, data=data, devices=devices, graph=graph,
                                     workdir=workdir)
        subprocess.run([sys.executable, "-c", script], check=True, cwd=trainlib.ROOT,
                       env=env, capture_output=True, timeout=900)
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        runs[name] = (trainlib.final_params(workdir),
                      [r["loss"] for r in rows if r.get("split") == "train"],
                      [r for r in rows if r.get("split") in ("val", "test")])
    assert trainlib.max_diff(runs["one"][0], runs["graph2"][0]) < 1e-6
    np.testing.assert_allclose(runs["graph2"][1], runs["one"][1], rtol=1e-5)
    assert len(runs["one"][1]) == 3
    # evaluation splits each batch over the graph devices too (Evaluator(graph_mesh=))
    evals = {name: {(r["split"], r["step"]): r for r in run[2]} for name, run in runs.items()}
    assert evals["one"].keys() == evals["graph2"].keys() and evals["one"]
    for key, ref in evals["one"].items():
        for metric in ("loss", "h_mae", "energy_ae", "forces_ae"):
            assert evals["graph2"][key][metric] == pytest.approx(ref[metric], rel=1e-4), (
                key, metric)
