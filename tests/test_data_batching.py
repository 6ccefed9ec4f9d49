"""Graphs with block labels, padded jraph batches, budgets, deterministic resumable epochs."""

import jax
import numpy as np
import pytest

from helm_jax import basis, blocks
from helm_jax.data import batching, graphs, pipeline, statistics
from helm_jax.data.records import Record
import molecules

TEMPLATE = basis.make_template("HCNO", "def2-svp")
SPEC = graphs.GraphSpec(TEMPLATE, cutoff=5.0)


def _record(symbols, coords, key="", seed=0):
    mol = molecules.pyscf_mol(symbols, coords, "def2-svp")
    h = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    z = np.array([basis.atomic_number(s) for s in symbols])
    rng = np.random.default_rng(seed)
    return Record(elements=z, coords=coords, fock=h, overlap=mol.intor("int1e_ovlp"),
                  energy=float(-rng.uniform(10, 20)), forces=rng.normal(size=coords.shape),
                  key=key)


class ListReader:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


@pytest.fixture(scope="module")
def reader():
    rng = np.random.default_rng(0)
    recs = []
    for k in range(7):
        sym, xyz = molecules.WATER if k % 2 else molecules.ETHANOL
        recs.append(_record(sym, xyz + rng.normal(scale=0.02, size=xyz.shape), f"m{k}", k))
    return ListReader(recs)


def test_graph_labels_reassemble_the_exact_fock_matrix(reader):
    rec = reader[0]
    g = graphs.build_graph(rec, graphs.GraphSpec(TEMPLATE, cutoff=50.0))
    assert g.n_edge == g.n_node * (g.n_node - 1)
    node_b = SPEC.node_layout.irreps_to_blocks(g.node_labels)
    edge_b = SPEC.edge_layout.irreps_to_blocks(g.edge_labels)
    full = blocks.blocks_to_full(node_b, edge_b, g.species, TEMPLATE, g.senders, g.receivers)
    assert np.abs(full - rec.fock).max() < 1e-12


def test_label_masks_count_real_entries(reader):
    g = graphs.build_graph(reader[0], SPEC)
    table = graphs.slot_mask_table(TEMPLATE)
    em = graphs.label_masks(g.species[g.senders], g.species[g.receivers], SPEC.edge_layout,
                            table)
    n_ao = np.array([TEMPLATE.ao_mask(z).sum() for z in g.species])
    assert em.sum() == (n_ao[g.senders] * n_ao[g.receivers]).sum()
    assert np.all(g.edge_labels[~em] == 0)


@pytest.mark.parametrize("bad,match", [
    (lambda c: np.where(np.arange(c.size).reshape(c.shape) == 4, np.nan, c), "NaN or inf"),
    (lambda c: np.concatenate([c, c[:1] + 0.05]), "apart"),
])
def test_bad_geometry_errors(reader, bad, match):
    rec = reader[0]
    coords = bad(rec.coords)
    z = np.concatenate([rec.elements, rec.elements[:1]]) if len(coords) > len(
        rec.elements) else rec.elements
    with pytest.raises(ValueError, match=match):
        graphs.build_graph(Record(elements=z, coords=coords), SPEC)


def test_element_outside_template_is_an_error():
    rec = Record(elements=np.array([9, 1]), coords=np.array([[0, 0, 0], [0, 0, 0.9]]))
    with pytest.raises(ValueError, match="not in this template"):
        graphs.build_graph(rec, SPEC)


def test_pad_batch_layout_and_masks(reader):
    gs = [graphs.build_graph(reader[i], SPEC) for i in range(3)]
    tn, te = sum(g.n_node for g in gs), sum(g.n_edge for g in gs)
    budget = batching.Budget(n_node=tn + 4, n_edge=te + 10, n_graph=5)
    b = batching.pad_batch(gs, budget, SPEC.node_layout.dim, SPEC.edge_layout.dim)
    assert b.nodes["h"].shape == (tn + 4, SPEC.node_layout.dim)
    assert int(b.n_node.sum()) == budget.n_node and int(b.n_edge.sum()) == budget.n_edge
    assert np.all(b.nodes["species"][tn:] == 0) and np.all(b.nodes["positions"][tn:] == 0)
    assert np.all(b.senders[te:] == tn) and np.all(b.receivers[te:] == tn)
    assert np.all(b.edges["h"][te:] == 0)
    np.testing.assert_array_equal(jax.device_get(b.globals["energy_mask"]),
                                  [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(b.senders[:gs[0].n_edge], gs[0].senders)
    np.testing.assert_array_equal(b.senders[gs[0].n_edge:gs[0].n_edge + gs[1].n_edge],
                                  gs[1].senders + gs[0].n_node)


def test_over_budget_is_an_error_naming_the_budget(reader):
    g = graphs.build_graph(reader[0], SPEC)
    small = batching.Budget(n_node=g.n_node, n_edge=g.n_edge, n_graph=2)  # no padding node
    with pytest.raises(batching.BudgetError, match="padding budget"):
        batching.pack_greedy([0], np.array([g.n_node]), np.array([g.n_edge]), small)
    with pytest.raises(batching.BudgetError, match="exceed"):
        batching.pad_batch([g], small, None, None)


def test_epochs_are_complete_deterministic_and_resumable(reader):
    data = pipeline.GraphDataset(reader, SPEC)
    cfg = pipeline.BatchConfig(molecules_per_batch=2, num_buckets=2)
    it = pipeline.BatchIterator(data, np.arange(7), cfg, n_devices=2, seed=3, prefetch=2)
    for epoch in range(2):
        seen = sorted(i for _, per_dev in it.plan(epoch) for idx in per_dev for i in idx)
        assert seen == list(range(7))  # every molecule exactly once, none dropped
    assert it.plan(0) != it.plan(1)
    it2 = pipeline.BatchIterator(data, np.arange(7), cfg, n_devices=2, seed=3)
    assert it2.plan(1) == it.plan(1)
    stream = iter(it)
    first = [next(stream) for _ in range(5)]
    state = it.get_state()
    after = [next(stream) for _ in range(3)]
    it3 = pipeline.BatchIterator(data, np.arange(7), cfg, n_devices=2, seed=3, prefetch=0)
    it3.set_state(state)
    again = [b for b, _ in zip(iter(it3), range(3))]
    for x, y in zip(after, again):
        for a, c in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
            np.testing.assert_array_equal(a, c)
    assert first[0].nodes["species"].shape[0] == 2  # stacked for 2 devices


@pytest.mark.parametrize("reference", ["shift", "standardize"])
def test_statistics_reference_per_element(reader, reference):
    gs = [graphs.build_graph(reader[i], SPEC) for i in range(len(reader))]
    st = statistics.compute_statistics(gs, SPEC.node_layout, node_reference=reference)
    mul0 = SPEC.node_layout.muls[0]
    raw = np.concatenate([g.node_labels for g in gs])
    y = np.concatenate([statistics.standardize_nodes(g.node_labels, g.species, st.node_mean,
                                                     st.node_std, mul0) for g in gs])
    z = np.concatenate([g.species for g in gs])
    table = graphs.slot_mask_table(TEMPLATE)
    m = graphs.label_masks(z, z, SPEC.node_layout, table)[:, :mul0]
    checked = 0
    for el in (1, 6, 8):
        sel = z == el
        for k in range(mul0):
            col, rcol = y[sel, k][m[sel, k]], raw[sel, k][m[sel, k]]
            if len(col) < 2 or rcol.std() < statistics.SIGMA_FLOOR:
                continue
            checked += 1
            assert abs(col.mean()) < 1e-10  # both references centre every component
            want = 1.0 if reference == "standardize" else rcol.std()  # shift keeps the scale
            assert abs(col.std() - want) < 1e-10 * max(1.0, want)
    assert checked >= 3
    if reference == "shift":
        assert np.all(st.node_std == 1.0)
    assert np.abs(y[:, mul0:] - raw[:, mul0:]).max() == 0.0  # l > 0 untouched
    back = statistics.destandardize_nodes(y, z, st.node_mean, st.node_std, mul0)
    assert np.abs(back - raw).max() < 1e-12
    with pytest.raises(ValueError, match="node_reference='scale'"):
        statistics.compute_statistics(gs, SPEC.node_layout, node_reference="scale")


@pytest.mark.parametrize("reference", ["shift", "standardize"])
def test_label_rms_per_degree_matches_the_labels(reader, reference):
    """Statistics.node_rms / edge_rms / label_rms: the RMS of the valid (referenced) label
    entries of each degree, computed in one pass; label_scales picks them per mode."""
    gs = [graphs.build_graph(reader[i], SPEC) for i in range(len(reader))]
    st = statistics.compute_statistics(gs, SPEC.node_layout, node_reference=reference,
                                       edge_layout=SPEC.edge_layout)
    table = graphs.slot_mask_table(TEMPLATE)
    mul0 = SPEC.node_layout.muls[0]
    ys, ms, ye, me = [], [], [], []
    for g in gs:
        ys.append(statistics.standardize_nodes(g.node_labels, g.species, st.node_mean,
                                               st.node_std, mul0))
        ms.append(graphs.label_masks(g.species, g.species, SPEC.node_layout, table))
        zs, zr = g.species[g.senders], g.species[g.receivers]
        ye.append(g.edge_labels)
        me.append(graphs.label_masks(zs, zr, SPEC.edge_layout, table))
    sq_all, n_all = 0.0, 0
    for name, y, m, layout, got in (("node", ys, ms, SPEC.node_layout, st.node_rms),
                                    ("edge", ye, me, SPEC.edge_layout, st.edge_rms)):
        y, m = np.concatenate(y), np.concatenate(m)
        deg = np.concatenate([np.full(mul * (2 * l + 1), l) for l, mul in
                              enumerate(layout.muls)])
        for l in range(len(layout.muls)):
            vals = y[:, deg == l][m[:, deg == l]]
            want = np.sqrt(np.mean(vals ** 2)) if vals.size else 0.0
            assert got[l] == pytest.approx(want, rel=1e-9, abs=1e-12), (name, l)
            sq_all, n_all = sq_all + np.sum(vals ** 2), n_all + vals.size
    assert st.label_rms == pytest.approx(np.sqrt(sq_all / n_all), rel=1e-9)
    assert st.label_rms > 0 and st.label_rms != 1.0  # measured, not a default
    node, edge = st.label_scales("rms")
    assert np.allclose(node + edge, st.label_rms, rtol=1e-12)
    assert len(node) == len(SPEC.node_layout.muls) and len(edge) == len(SPEC.edge_layout.muls)
    node, edge = st.label_scales("rms_per_degree")
    assert node[1] == pytest.approx(st.node_rms[1]) and edge[0] == pytest.approx(st.edge_rms[0])
    assert st.label_scales("none") == ((), ())
    again = statistics.Statistics.from_dict(st.to_dict())
    assert again.label_scales("rms_per_degree") == st.label_scales("rms_per_degree")
    old = {k: v for k, v in st.to_dict().items() if "rms" not in k}  # saved before rms
    with pytest.raises(ValueError, match="label_scale='none'"):
        statistics.Statistics.from_dict(old).label_scales("rms")


def test_energy_reference_recovers_a_linear_model():
    w = {1: -0.5, 6: -37.8, 8: -75.0}
    gs = []
    rng = np.random.default_rng(0)
    for _ in range(12):
        z = rng.choice([1, 6, 8], size=rng.integers(3, 9))
        gs.append(graphs.MolGraph(species=z, positions=np.zeros((len(z), 3)),
                                  senders=np.zeros(0, int), receivers=np.zeros(0, int),
                                  node_labels=None, edge_labels=None,
                                  energy=sum(w[int(a)] for a in z), forces=None))
    st = statistics.compute_statistics(gs, SPEC.node_layout)
    for el, val in w.items():
        assert abs(st.energy_ref[el] - val) < 1e-6
