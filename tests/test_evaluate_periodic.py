"""Periodic evaluation (helm_jax/evaluate_periodic.py) on a labelled h-BN cell.

One KRKS SCF of h-BN (GTH-SZV, GTH-PBE, GDF, 2x2x1 mesh, as tests/test_periodic_labels.py)
through ``data_prep/label.py --band_path=4`` (PySCF's get_bands at G-K-M-G); a second group
holds the same labels without path bands. The 2x2 mesh keeps the SCF fast; its labels
interpolate badly off the mesh (docs/periodic.md), which the path bound reports. Oracles:
the perfect model (the labels as predictions) reaches the bounds; a prediction H + delta S
moves every band on the mesh by exactly delta and the real-space MAE by delta mean|S|;
PySCF's S(k) and get_bands at the path points that lie on the mesh equal the labels'.
"""

import dataclasses
import json
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"  # pylint: disable=wrong-import-position

import ase
import ase.io
import h5py
import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data_prep import label as label_cli  # pylint: disable=wrong-import-position
from helm_jax import evaluate_periodic as ev  # pylint: disable=wrong-import-position
from helm_jax.configs import base  # pylint: disable=wrong-import-position
from helm_jax.data import batching, datasets, geometry, graphs, labelling_pbc  # pylint: disable=wrong-import-position
from helm_jax.data import periodic as P  # pylint: disable=wrong-import-position
from helm_jax.data.readers import open_dataset  # pylint: disable=wrong-import-position
from helm_jax.model import helm  # pylint: disable=wrong-import-position

from test_periodic_labels import HBN_CELL, HBN_XYZ, PBC_2D  # noqa: E402  (one h-BN cell for both files)
pytestmark = pytest.mark.slow  # one SCF and get_bands: 25-45 s on the busy 2-core machine

CUTOFF_ALL = 3.5  # the 2x2 labels store pairs up to 2.89 A: every one is an edge
CUTOFF_NN = 2.0  # nearest neighbours only (1.44 A)


@pytest.fixture(scope="module", name="h5")
def fixture_h5(tmp_path_factory):
    """The labelled file: group 0 with path bands (the labeller), group 1 without."""
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(1)
    tmp = tmp_path_factory.mktemp("hbn")
    inp, out = str(tmp / "hbn.extxyz"), str(tmp / "hbn.h5")
    ase.io.write(inp, [ase.Atoms("BN", positions=HBN_XYZ, cell=HBN_CELL, pbc=PBC_2D)],
                 format="extxyz")
    assert label_cli.main([f"--input={inp}", f"--out={out}", "--xc=pbe", "--basis=gth-szv",
                           "--pseudo=gth-pbe", "--kmesh=2,2,1", "--ke_cutoff=20",
                           "--conv_tol=1e-8", "--band_path=4", "--no_progress"]) == 0
    rec = open_dataset(out, periodic=True)[0]
    assert rec.periodic.path_bands.shape == (4, 8)
    no_path = dataclasses.replace(rec.periodic, path_kpts=None, path_bands=None)
    structure = geometry.Structure(rec.elements, rec.coords, 0, 0, "hbn_no_path", rec.cell,
                                   rec.pbc)
    with h5py.File(out, "a") as f:
        labelling_pbc.write_label(f, "0000001", structure, labelling_pbc.PeriodicLabel(
            labels=no_path, energy=rec.energy, converged=True, scf_cycles=1,
            n_electrons=rec.periodic.n_electrons, n_beyond_bvk=0))
    return out


def _config(h5, cutoff):
    c = base.get_config()
    base.tiny_model(c, l_max=2)  # p-p blocks need l = 2
    c.model.cutoff = cutoff
    c.data.update(path=h5, periodic=True, split_order="contiguous")
    c.data.split = dict(train=1, val=0, test=None)
    return c


def _data(h5, cutoff):
    """Data with both structures in "test" (statistics from structure 0)."""
    c = _config(h5, cutoff)
    data = datasets.load_data(c.data, cutoff=cutoff, reduced_nodes=True)
    return dataclasses.replace(data, splits={**data.splits, "test": np.array([0, 1])})


@pytest.fixture(scope="module", name="data_all")
def fixture_data_all(h5):
    return _data(h5, CUTOFF_ALL)


def _on_mesh(kpts, mesh):
    scaled = np.asarray(kpts) * mesh
    return np.flatnonzero(np.abs(scaled - np.rint(scaled)).max(1) < 1e-9)


def test_perfect_model_reaches_the_bounds_and_writes_outputs(data_all, h5, tmp_path, capsys):
    rep = ev.evaluate_periodic(None, None, data_all, "test", workdir=str(tmp_path),
                               predict=ev.label_predictor)
    s = rep["summary"]
    printed = capsys.readouterr().out
    print(printed)
    print({k: f"{v:.3g}" for k, v in s.items()})
    assert s["n_structures"] == 2 and s["n_mesh"] == 2 and s["n_path"] == 1
    assert s["h_mae_eh"] < 1e-15 and s["h_mae_onsite_meV"] < 1e-10  # irreps round trip
    assert s["n_label_pairs_beyond_cutoff"] == 0
    assert {"h_mae_shell_1-2A_meV", "h_mae_shell_2-3A_meV"} <= set(s)
    # every stored pair is an edge: the mesh bands are the labels' own
    for key in ("mesh_band_mae", "mesh_valence_mae", "mesh_gap_mae"):
        assert s[f"{key}_meV"] < 1e-8 and s[f"bound_truncated_{key}_meV"] == s[f"{key}_meV"]
    # off the mesh the perfect model is exactly the labels' interpolation (large at 2x2)
    for key in ("path_band_mae", "path_valence_mae", "path_gap_mae"):
        assert s[f"{key}_meV"] == pytest.approx(s[f"bound_labels_{key}_meV"], abs=1e-9)
        assert s[f"{key}_meV"] == pytest.approx(s[f"bound_truncated_{key}_meV"], abs=1e-9)
    assert s["path_band_mae_meV"] > 100
    # the structure without path bands: on-mesh metrics only, said so
    row = rep["structures"][1]
    assert "mesh_band_mae_meV" in row and "path_band_mae_meV" not in row
    assert any("0000001" in n and "--band_path" in n for n in rep["notes"])
    assert "note: 0000001: no path metrics" in printed and "perfect@cutoff" in printed
    # outputs: the JSON report and one plot (the structure with path bands)
    with open(tmp_path / "periodic_eval_test.json") as f:
        assert json.load(f)["summary"] == s
    assert rep["plots"] == [str(tmp_path / "bands_test_0000000.png")]
    assert os.path.getsize(rep["plots"][0]) > 10_000

    # PySCF's S(k) and get_bands at the path points on the 2x2 mesh (G, M) are the labels'
    rec, graph = data_all.reader[0], data_all.graphs[0]
    res = ev.evaluate_structure(rec, graph, data_all.spec, ev.label_predictor,
                                ev.settings_from_attrs(data_all.reader.attrs))
    pb, labels = res.path_bands, rec.periodic
    on = _on_mesh(pb["kpts"], labels.kmesh)
    assert [n for _, n in pb["ticks"]] == list("GKMG") and on.tolist() == [0, 2, 3]
    s_exact = ev.path_overlap(rec, ev.settings_from_attrs(data_all.reader.attrs), pb["kpts"])
    s_labels = P.labels_to_k(labels, pb["kpts"], "overlap")
    err_s_on = np.abs(s_exact[on] - s_labels[on]).max()
    err_s_k = np.abs(s_exact[1] - s_labels[1]).max()
    err_e_on = np.nanmax(np.abs(pb["labels"][on] - pb["reference"][on]))
    print(f"path: |S_pyscf - S_labels| {err_s_on:.1e} on the mesh, {err_s_k:.2f} at K; "
          f"label bands vs get_bands on the mesh {err_e_on:.1e} Eh")
    assert err_s_on < 1e-9 and err_s_k > 0.1 and err_e_on < 1e-5


def test_truncated_cutoff_perfect_model_is_exact_in_real_space(h5):
    data = _data(h5, CUTOFF_NN)
    s = ev.evaluate_periodic(None, None, data, "test", predict=ev.label_predictor,
                             verbose=False)["summary"]
    print({k: f"{v:.3g}" for k, v in s.items()})
    assert s["h_mae_eh"] < 1e-15 and s["n_label_pairs_beyond_cutoff"] > 0
    assert s["mesh_band_mae_meV"] > 10
    assert s["mesh_band_mae_meV"] == s["bound_truncated_mesh_band_mae_meV"]


def _overlap_irreps(data, graph, index):
    """Edge and node irreps of the labels' overlap blocks (weighted like the H labels)."""
    node_b, edge_b, _ = graphs.periodic_blocks(
        data.reader[index].periodic, graph.species, data.spec.template, graph.senders,
        graph.receivers, graph.translations, which="overlap")
    return (data.spec.node_layout.blocks_to_irreps(node_b),
            data.spec.edge_layout.blocks_to_irreps(edge_b))


def test_h_plus_delta_s_shifts_bands_by_delta_and_reverse_edges_are_averaged(data_all):
    """H + delta S: every band on the mesh moves by delta (generalised eigenproblem), the
    gap does not, and the real-space MAE is delta mean|w S| over the stored pairs. The
    prediction also carries antisymmetric noise between reverse edges, which the
    Hermitisation removes."""
    delta = 0.01
    rng = np.random.default_rng(0)

    def predict(graph):
        node, edge = ev.label_predictor(graph)
        s_node, s_edge = _overlap_irreps(data_all, graph, 0)
        blocks = data_all.spec.edge_layout.irreps_to_blocks(edge + delta * s_edge)
        where = {(a, b, *t): e for e, (a, b, t) in enumerate(zip(
            graph.senders.tolist(), graph.receivers.tolist(), graph.translations.tolist()))}
        for e, (a, b, t) in enumerate(zip(graph.senders.tolist(), graph.receivers.tolist(),
                                          graph.translations.tolist())):
            rev = where[(b, a, *[-x for x in t])]
            if e < rev:
                noise = rng.normal(size=blocks.shape[1:])
                blocks[e] += noise
                blocks[rev] -= noise.T
        return node + delta * s_node, data_all.spec.edge_layout.blocks_to_irreps(blocks)

    rec, graph = data_all.reader[0], data_all.graphs[0]
    settings = ev.settings_from_attrs(data_all.reader.attrs)
    res = ev.evaluate_structure(rec, graph, data_all.spec, predict, settings)
    m, lab = res.metrics, rec.periodic
    w_s = [np.abs(lab.weight[p] * lab.block(p, "overlap")) for p in range(lab.n_pairs)]
    onsite = [w for w, (i, j), t in zip(w_s, lab.pairs, lab.translations)
              if i == j and not t.any()]
    want_h = delta * sum(w.sum() for w in w_s) / sum(w.size for w in w_s)
    want_onsite = delta * sum(w.sum() for w in onsite) / sum(w.size for w in onsite)
    print(f"H + {delta} S: h_mae {m['h_mae']:.6e} (expected {want_h:.6e}), mesh band MAE "
          f"{m['mesh_band_mae']:.3e}, path band MAE {m['path_band_mae']:.3e} "
          f"(labels {m['bound_labels_path_band_mae']:.3e}) Eh")
    assert m["h_mae"] == pytest.approx(want_h, rel=1e-9)
    assert m["h_mae_onsite"] == pytest.approx(want_onsite, rel=1e-9)
    assert m["mesh_band_mae"] == pytest.approx(delta, rel=1e-7)
    assert m["mesh_valence_mae"] == pytest.approx(delta, rel=1e-7)
    assert abs(m["mesh_gap_err"]) < 1e-9
    np.testing.assert_allclose(res.mesh_bands["model"] - res.mesh_bands["reference"], delta,
                               rtol=1e-7)
    # on the path: exactly +delta over the labels' bands where PySCF's S(k) is the labels'
    pb = res.path_bands
    on = _on_mesh(pb["kpts"], lab.kmesh)
    np.testing.assert_allclose(pb["model"][on] - pb["labels"][on], delta, rtol=1e-6)


def test_random_tiny_model_gives_finite_metrics_and_hermitian_blocks(h5, data_all, tmp_path):
    c = _config(h5, CUTOFF_ALL)
    model = helm.build_model(c, data_all.template, data_all.stats)
    graph = data_all.graphs[0]
    batch = batching.pad_batch([graph], batching.Budget(graph.n_node + 1, graph.n_edge, 2),
                               None, None, periodic=True)
    inputs = helm.batch_inputs(batch)
    num_graphs = inputs.pop("num_graphs")
    init = jax.jit(model.init, static_argnames=("num_graphs",))  # faster than eager here
    params = init(jax.random.PRNGKey(0), **inputs, num_graphs=num_graphs)["params"]
    rep = ev.evaluate_periodic(model, params, data_all, "test", workdir=str(tmp_path),
                               plot=False)
    s = rep["summary"]
    print({k: f"{v:.3g}" for k, v in s.items()})
    values = [v for k, v in s.items() if k.endswith("_meV")]
    assert len(values) == 19 and np.all(np.isfinite(values))
    assert s["h_mae_meV"] > 1 and s["mesh_band_mae_meV"] > 1 and rep["plots"] == []
    assert not os.path.exists(tmp_path / "bands_test_0000000.png")
    pred = ev.predicted_blocks(model, params, graph, data_all.spec, data_all.stats)
    index = {(int(i), int(j), *t.tolist()): p
             for p, ((i, j), t) in enumerate(zip(pred.pairs, pred.translations))}
    assert len(index) == graph.n_edge + graph.n_node and np.all(pred.weight == 1)
    for (i, j, *t), p in index.items():
        np.testing.assert_array_equal(pred.block(index[(j, i, *[-x for x in t])]),
                                      pred.block(p).T)
    hk = P.labels_to_k(pred, np.array([[0.1, 0.27, 0.0]]))
    assert np.abs(hk - np.conj(np.swapaxes(hk, 1, 2))).max() < 1e-12
