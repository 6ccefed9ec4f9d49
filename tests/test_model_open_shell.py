"""Open shells: charge/spin conditioning, spin-resolved heads and labels
(docs/model_and_training.md, "Open shells").

Open-shell references are PySCF UHF Fock matrices ``[2, N, N]`` (alpha, beta) of the CH3
radical; the model tests use the 6-31G template (s and p shells, so l_max = 2 keeps the
compilations small), the overfitting test def2-SVP. Models are built once per setting
(:func:`_model`) and shared, since compiling is most of the time.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helm_jax import basis, blocks, checkpoint, configs, losses, parallel, sph, train
from helm_jax.configs import base
from helm_jax.data import batching, datasets, graphs, pipeline, statistics
from helm_jax.data.records import Record
from helm_jax.model import assemble, helm
from equivariance_checks import assert_equivariant, random_rotation, rotate_vectors
import molecules

T631 = basis.make_template("HCO", "6-31g")
MODES = ("alpha_beta", "sum_diff")

CH3 = (["C", "H", "H", "H"],
       np.array([[0.0, 0.0, 0.05], [1.079, 0.0, -0.02], [-0.5395, 0.9344, -0.02],
                 [-0.5395, -0.9344, -0.02]]))
OH = (["O", "H"], np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.971]]))


def _z(symbols):
    return np.array([basis.atomic_number(s) for s in symbols], np.int32)


def _uhf_record(symbols, coords, basis_name, spin=1, charge=0, key=""):
    """A spin-resolved record: the UHF alpha and beta Fock matrices of a PySCF mean field."""
    from pyscf import scf
    mol = molecules.pyscf_mol(symbols, coords, basis_name, charge=charge, spin=spin)
    mf = scf.UHF(mol)
    mf.conv_tol = 1e-9
    mf.kernel()
    fa, fb = mf.get_fock(dm=mf.make_rdm1())
    return Record(elements=_z(symbols), coords=coords, fock=np.asarray(fa),
                  fock_beta=np.asarray(fb), overlap=mol.intor("int1e_ovlp"),
                  energy=float(mf.e_tot), charge=charge, spin=spin, key=key)


def _rhf_record(symbols, coords, basis_name, key=""):
    from pyscf import scf
    mol = molecules.pyscf_mol(symbols, coords, basis_name)
    mf = scf.RHF(mol).run(conv_tol=1e-9)
    return Record(elements=_z(symbols), coords=coords, fock=mf.get_fock(),
                  overlap=mol.intor("int1e_ovlp"), energy=float(mf.e_tot), key=key)


@pytest.fixture(scope="module")
def labelled():
    """CH3 (UHF, 2S = 1) and water (RHF) in 6-31G."""
    return (_uhf_record(*CH3, "6-31g", key="ch3"),
            _rhf_record(*molecules.WATER, "6-31g", key="water"))


def _config(mode="sum_diff", embed=True, l_max=2, channels=8, dtype="float32"):
    c = base.get_config()
    c.model.update(channels=channels, num_layers=1, l_max=l_max, m_max=2, num_rbf=8,
                   edge_channels_hidden=8, ffn_channels=8, cutoff=5.0, dtype=dtype,
                   param_dtype=dtype, charge_spin_embedding=embed)
    c.heads.update(hidden=16, energy_hidden=16, spin=mode)
    return c


SPEC = graphs.GraphSpec(T631, 5.0, spin_resolved=True, charge_spin_embedding=True)


def _graph(symbols, coords, charge=0, spin=0, spec=SPEC):
    return graphs.build_graph(Record(elements=_z(symbols), coords=coords, charge=charge,
                                     spin=spin), spec, with_labels=False)


def _pair_batch(ch3_coords=CH3[1], spin=1, charge=0, water_first=False, budget=None):
    """CH3 (given 2S, charge) and closed-shell water in one padded label-free batch."""
    gs = [_graph(CH3[0], ch3_coords, charge, spin), _graph(*molecules.WATER)]
    if water_first:
        gs = gs[::-1]
    return batching.pad_batch(gs, budget or batching.Budget(8, 18, 3), None, None)


def _init(model, batch):
    inputs = helm.batch_inputs(batch)
    num_graphs = inputs.pop("num_graphs")
    return jax.jit(lambda k, i: model.init(k, **i, num_graphs=num_graphs))(
        jax.random.PRNGKey(0), inputs)["params"]


@functools.lru_cache(maxsize=None)
def _apply_fn(model):
    return jax.jit(lambda p, b: model.apply({"params": p}, **helm.batch_inputs(b)))


def _apply(model, params, batch):
    return jax.device_get(_apply_fn(model)(params, batch))


def _derive(params, mode, embed):
    """The parameters of a ``(heads.spin=mode, charge_spin_embedding=embed)`` model taken
    from those of the sum_diff model with the embedding, which hold every kind of parameter
    (one initialisation to compile instead of one per setting): the beta heads of
    alpha_beta are initialised like the difference heads of sum_diff."""
    backbone = {k: v for k, v in params["backbone"].items()
                if embed or k not in ("charge_embedding", "spin_embedding")}
    heads = params["hamiltonian_head"]
    head = {"node": heads["node"], "edge": heads["edge"]}
    if mode != "none":
        suffix = "_diff" if mode == "sum_diff" else "_beta"
        head.update({"node" + suffix: heads["node_diff"], "edge" + suffix: heads["edge_diff"]})
    return {"backbone": backbone, "hamiltonian_head": head, "energy_head": params["energy_head"]}


def _derived_params(model, superset, mode, embed, batch):
    """:func:`_derive`, checked against the tree ``model.init`` would make (its shapes)."""
    params = _derive(superset, mode, embed)
    inputs = helm.batch_inputs(batch)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(params), mode
    assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in
               zip(jax.tree.leaves(shapes), jax.tree.leaves(params)))
    return params


@functools.lru_cache(maxsize=None)
def _model(mode, embed=True):
    """``(model, params)`` of a tiny 6-31G model (built once per setting)."""
    model = helm.build_model(_config(mode, embed), T631)
    batch = _pair_batch(spin=0)
    if (mode, embed) == ("sum_diff", True):
        return model, _init(model, batch)
    return model, _derived_params(model, _model("sum_diff")[1], mode, embed, batch)


@pytest.fixture(scope="module", params=MODES)
def spin_model(request):
    return _model(request.param)


def _full(out, batch, k, spin):
    """Full H of the k-th real molecule of a batch (alpha or beta)."""
    layouts = (SPEC.node_layout, SPEC.edge_layout, None)
    return assemble.batch_to_full(out, batch, *layouts, spin=spin)[k]


def _wigner(symbols, rot):
    ls = [l for s in symbols for l in T631.element(s).shell_l]
    return sph.molecule_ao_wigner(ls, rot)


# -- graphs, batches, statistics -----------------------------------------------------------


def test_graphs_and_batches_carry_charge_spin_and_beta_labels(labelled):
    ch3, water = labelled
    g_ch3, g_w = graphs.build_graph(ch3, SPEC), graphs.build_graph(water, SPEC)
    assert (g_ch3.charge, g_ch3.spin) == (0, 1)
    assert g_w.node_labels_beta is None and g_w.edge_labels_beta is None
    # The beta irreps are the beta Fock matrix's blocks: back to the full matrix exactly.
    nodes = SPEC.node_layout.irreps_to_blocks(g_ch3.node_labels_beta)
    edges = SPEC.edge_layout.irreps_to_blocks(g_ch3.edge_labels_beta)
    back = blocks.blocks_to_full(
        nodes, edges, g_ch3.species, T631, g_ch3.senders, g_ch3.receivers)
    np.testing.assert_allclose(back, ch3.fock_beta, atol=1e-12)
    assert np.abs(g_ch3.node_labels_beta - g_ch3.node_labels).max() > 1e-2  # alpha != beta

    dims = (SPEC.node_layout.dim, SPEC.edge_layout.dim)
    b = batching.pad_batch([g_ch3, g_w], batching.Budget(9, 20, 4), *dims, np.float64,
                           spin_resolved=True)
    np.testing.assert_array_equal(b.globals["charge"], [0, 0, 0, 0])
    np.testing.assert_array_equal(b.globals["spin"], [1, 0, 0, 0])
    assert b.globals["spin"].dtype == np.int32 and b.globals["charge"].dtype == np.int32
    np.testing.assert_array_equal(b.nodes["h_beta"][:4], g_ch3.node_labels_beta)
    np.testing.assert_array_equal(b.edges["h_beta"][:12], g_ch3.edge_labels_beta)
    np.testing.assert_array_equal(b.nodes["h_beta"][4:7], g_w.node_labels)  # restricted
    np.testing.assert_array_equal(b.edges["h_beta"][12:18], g_w.edge_labels)
    assert np.all(b.nodes["h_beta"][7:] == 0) and np.all(b.edges["h_beta"][18:] == 0)

    # Restricted data without spin_resolved: the arrays of before, plus charge and spin.
    plain = graphs.GraphSpec(T631, 5.0)
    old = batching.pad_batch([graphs.build_graph(water, plain)], batching.Budget(5, 8, 3),
                             *dims)
    new = batching.pad_batch([g_w], batching.Budget(5, 8, 3), *dims, spin_resolved=True)
    assert set(old.nodes) == {"species", "positions", "forces", "forces_mask", "h"}
    assert set(old.edges) == {"h"}
    assert set(old.globals) == {"energy", "energy_mask", "h_mask", "charge", "spin"}
    for k in old.nodes:
        np.testing.assert_array_equal(old.nodes[k], new.nodes[k])
    np.testing.assert_array_equal(old.edges["h"], new.edges["h"])
    np.testing.assert_array_equal(new.nodes["h_beta"], old.nodes["h"])


def test_spec_refuses_what_the_model_cannot_represent(labelled):
    ch3, _ = labelled
    with pytest.raises(ValueError, match="--config.heads.spin=sum_diff"):
        graphs.build_graph(ch3, graphs.GraphSpec(T631, 5.0))
    label_free = Record(elements=ch3.elements, coords=ch3.coords, spin=1)
    with pytest.raises(ValueError, match="--config.model.charge_spin_embedding=True"):
        graphs.build_graph(label_free, graphs.GraphSpec(T631, 5.0, charge_spin_embedding=False))
    for bad in (dict(charge=11, spin=1), dict(charge=0, spin=-1), dict(charge=1, spin=11)):
        with pytest.raises(ValueError, match="outside the range"):
            graphs.build_graph(Record(elements=ch3.elements, coords=ch3.coords, **bad), SPEC)
    with pytest.raises(ValueError, match="heads.spin='up'"):
        helm.build_model(_config("up"), T631)


def test_statistics_cover_both_spins(labelled):
    ch3, water = labelled
    g_ch3, g_w = graphs.build_graph(ch3, SPEC), graphs.build_graph(water, SPEC)
    layouts = dict(node_layout=SPEC.node_layout, edge_layout=SPEC.edge_layout)
    # Restricted labels count once per spin: the same references and units.
    one = statistics.compute_statistics([g_w], **layouts)
    both = statistics.compute_statistics([g_w], **layouts, spin_resolved=True)
    np.testing.assert_allclose(both.node_mean, one.node_mean, rtol=1e-14, atol=0)
    np.testing.assert_allclose(both.edge_rms, one.edge_rms, rtol=1e-13)
    assert both.label_rms == pytest.approx(one.label_rms, rel=1e-13)
    # Spin-resolved labels: references and units are those of the alpha and the beta
    # labels pooled (equal counts, so the means of the two spins' statistics).
    st = statistics.compute_statistics([g_ch3], **layouts, spin_resolved=True)
    a = statistics.compute_statistics([g_ch3], **layouts)
    b = statistics.compute_statistics([dataclasses.replace(
        g_ch3, node_labels=g_ch3.node_labels_beta, edge_labels=g_ch3.edge_labels_beta)],
        **layouts)
    np.testing.assert_allclose(st.node_mean, (a.node_mean + b.node_mean) / 2, rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(st.edge_rms ** 2, (a.edge_rms ** 2 + b.edge_rms ** 2) / 2,
                               rtol=1e-12)
    assert np.abs(a.node_mean[6] - b.node_mean[6]).max() > 1e-2  # the spins differ
    # The carbon l = 0 references are its labels themselves (one carbon atom).
    mul0 = SPEC.node_layout.muls[0]
    np.testing.assert_allclose(a.node_mean[6], np.where(
        graphs.label_masks(np.array([6]), np.array([6]), SPEC.node_layout,
                           graphs.slot_mask_table(T631))[0, :mul0],
        g_ch3.node_labels[0, :mul0], 0.0), rtol=1e-12)


def test_spin_rms_is_the_unit_of_the_difference_head(labelled):
    ch3, water = labelled
    g_ch3, g_w = graphs.build_graph(ch3, SPEC), graphs.build_graph(water, SPEC)
    layouts = dict(node_layout=SPEC.node_layout, edge_layout=SPEC.edge_layout)
    st = statistics.compute_statistics([g_ch3, g_w], **layouts, spin_resolved=True)
    # RMS of (alpha - beta) / 2 over the radical's valid label entries, by hand.
    table = graphs.slot_mask_table(T631)
    mn = graphs.label_masks(g_ch3.species, g_ch3.species, SPEC.node_layout, table)
    zs, zr = g_ch3.species[g_ch3.senders], g_ch3.species[g_ch3.receivers]
    me = graphs.label_masks(zs, zr, SPEC.edge_layout, table)
    dn = (g_ch3.node_labels - g_ch3.node_labels_beta) / 2
    de = (g_ch3.edge_labels - g_ch3.edge_labels_beta) / 2
    want = np.sqrt((np.sum(dn[mn] ** 2) + np.sum(de[me] ** 2)) / (mn.sum() + me.sum()))
    assert st.spin_rms == pytest.approx(want, rel=1e-12)
    assert 0 < st.spin_rms < st.label_rms / 5  # the exchange splitting is small
    node, edge = st.spin_scales("rms")
    assert set(node) == set(edge) == {st.spin_rms}
    assert st.spin_scales("none") == ((), ())
    assert statistics.Statistics.from_dict(st.to_dict()).spin_rms == st.spin_rms
    closed = statistics.compute_statistics([g_w], **layouts, spin_resolved=True)
    assert closed.spin_rms is None and closed.spin_scales("rms") == closed.label_scales("rms")
    c = _config("sum_diff")
    model = helm.build_model(c, T631, st)
    assert model.diff_node_scales == node and model.node_scales == st.label_scales("rms")[0]


def test_batch_iterator_ships_beta_labels(labelled):
    ch3, water = labelled
    data = pipeline.GraphDataset([ch3, water], SPEC)
    it = pipeline.BatchIterator(data, [0, 1], pipeline.BatchConfig(molecules_per_batch=2,
                                                                   num_buckets=1),
                                shuffle=False, prefetch=0, dtype=np.float64)
    b = jax.tree.map(lambda x: x[0], it.make_batch(*it.plan(0)[0]))
    np.testing.assert_array_equal(b.globals["spin"][:2], [1, 0])
    np.testing.assert_array_equal(b.nodes["h_beta"][:4], data[0].node_labels_beta)
    np.testing.assert_array_equal(b.nodes["h_beta"][4:7], data[1].node_labels)


# -- the model -----------------------------------------------------------------------------


def test_spin_heads_are_equivariant(spin_model):
    model, params = spin_model

    def outputs(coords):
        b = _pair_batch(coords)
        out = _apply(model, params, b)
        return _full(out, b, 0, "alpha"), _full(out, b, 0, "beta"), out["energy"][0]

    def rotate(rot, out):
        d = _wigner(CH3[0], rot)
        return d @ out[0] @ d.T, d @ out[1] @ d.T, out[2]

    h_a, h_b, _ = outputs(CH3[1])
    assert np.abs(h_a - h_b).max() > 1e-4 * np.abs(h_a).max()  # an open shell: alpha != beta
    assert_equivariant(outputs, CH3[1], rotate_vectors, rotate,
                       rotations=[random_rotation(11), random_rotation(12)],
                       atol=(2e-5, 2e-5, 0.0), rtol=(0.0, 0.0, 2e-5),
                       relative=(True, True, False))


def test_closed_shells_get_identical_alpha_and_beta(spin_model):
    model, params = spin_model
    out = _apply(model, params, _pair_batch())
    # Water (nodes 4-6, edges 12-17) is closed shell: bit-identical spins.
    np.testing.assert_array_equal(out["node_h"][4:7], out["node_h_beta"][4:7])
    np.testing.assert_array_equal(out["edge_h"][12:18], out["edge_h_beta"][12:18])
    assert np.abs(out["node_h"][4:7]).max() > 1e-2  # not zeros
    # CH3 (2S = 1) is not; with 2S = 0 it is too.
    assert np.abs(out["node_h"][:4] - out["node_h_beta"][:4]).max() > 1e-4
    singlet = _apply(model, params, _pair_batch(spin=0))
    np.testing.assert_array_equal(singlet["node_h"], singlet["node_h_beta"])
    np.testing.assert_array_equal(singlet["edge_h"], singlet["edge_h_beta"])


def test_padding_and_packing_invariance(spin_model):
    model, params = spin_model
    a = _apply(model, params, _pair_batch())
    b = _apply(model, params, _pair_batch(water_first=True, budget=batching.Budget(11, 26, 5)))
    for key, rows_a, rows_b in (("node_h", slice(0, 4), slice(3, 7)),
                                ("node_h_beta", slice(0, 4), slice(3, 7)),
                                ("edge_h", slice(0, 12), slice(6, 18)),
                                ("edge_h_beta", slice(0, 12), slice(6, 18))):
        np.testing.assert_allclose(b[key][rows_b], a[key][rows_a], rtol=1e-5, atol=1e-6)
        assert np.all(b[key][rows_b.stop if "node" in key else 18:] == 0)  # padded rows
    np.testing.assert_allclose(b["energy"][1], a["energy"][0], rtol=1e-5)


def test_permuting_atoms_permutes_both_spins(spin_model):
    model, params = spin_model
    perm = np.array([2, 0, 3, 1])
    b0 = _pair_batch()
    out0 = _apply(model, params, b0)
    symbols = [CH3[0][i] for i in perm]
    gs = [_graph(symbols, CH3[1][perm], 0, 1), _graph(*molecules.WATER)]
    b1 = batching.pad_batch(gs, batching.Budget(8, 18, 3), None, None)
    out1 = _apply(model, params, b1)
    sl = basis.molecule_ao_slices(_z(CH3[0]), "6-31g")
    idx = np.concatenate([np.arange(sl[i].start, sl[i].stop) for i in perm])
    for spin in ("alpha", "beta"):
        h0, h1 = _full(out0, b0, 0, spin), _full(out1, b1, 0, spin)
        np.testing.assert_allclose(h1, h0[np.ix_(idx, idx)], atol=1e-5 * np.abs(h0).max())
    np.testing.assert_allclose(out1["energy"][0], out0["energy"][0], rtol=1e-5)


def test_charge_and_spin_change_the_outputs():
    model, params = _model("sum_diff")
    doublet = _apply(model, params, _pair_batch(spin=1))
    for other in (_pair_batch(spin=3), _pair_batch(charge=1, spin=0)):
        out = _apply(model, params, other)
        assert np.abs(out["node_h"][:4] - doublet["node_h"][:4]).max() > 1e-3
        assert np.abs(out["edge_h"][:12] - doublet["edge_h"][:12]).max() > 1e-3
        assert abs(out["energy"][0] - doublet["energy"][0]) > 1e-4
        np.testing.assert_array_equal(out["node_h"][4:7], doublet["node_h"][4:7])  # water
    # Without the embedding the backbone does not see them (only the open-shell switch of
    # the spin-difference head does), so the energy cannot tell them apart.
    blind, p_blind = _model("sum_diff", embed=False)
    assert "charge_embedding" not in p_blind["backbone"]
    assert {"charge_embedding", "spin_embedding"} <= set(params["backbone"])
    e1 = _apply(blind, p_blind, _pair_batch(spin=1))["energy"]
    e3 = _apply(blind, p_blind, _pair_batch(spin=3, charge=1))["energy"]
    np.testing.assert_array_equal(e1, e3)


def test_defaults_leave_closed_shells_unchanged():
    """Default flags: the parameter tree and outputs of a model without the new inputs."""
    defaults = base.get_config()
    assert not defaults.model.charge_spin_embedding and defaults.heads.spin == "none"
    model, params = _model("none", embed=False)
    assert set(params) == {"backbone", "hamiltonian_head", "energy_head"}
    assert set(params["hamiltonian_head"]) == {"node", "edge"}
    assert not any("charge" in k or "spin" in k for k in params["backbone"])
    b = _pair_batch(spin=0)
    out_new = _apply(model, params, b._replace(globals={
        **b.globals, "charge": np.array([3, -2, 0], np.int32)}))
    assert set(out_new) == {"node_h", "edge_h", "energy"}
    inputs = {k: v for k, v in helm.batch_inputs(b).items() if k not in ("charge", "spin")}
    num_graphs = inputs.pop("num_graphs")
    out_old = jax.device_get(jax.jit(
        lambda p, i: model.apply({"params": p}, **i, num_graphs=num_graphs))(params, inputs))
    for k in out_old:
        np.testing.assert_array_equal(out_new[k], out_old[k])
    # The sum_diff head on closed shells is exactly its spin-averaged head: the spin-none
    # model with the same parameters (less the difference head) gives the same numbers.
    sd, p_sd = _model("sum_diff", embed=False)
    head = {k: v for k, v in p_sd["hamiltonian_head"].items() if not k.endswith("_diff")}
    assert set(p_sd["hamiltonian_head"]) - set(head) == {"node_diff", "edge_diff"}
    out_sd = _apply(sd, p_sd, b)
    out_plain = _apply(model, {**p_sd, "hamiltonian_head": head}, b)
    for key in ("node_h", "edge_h"):
        np.testing.assert_array_equal(out_sd[key], out_plain[key])
        np.testing.assert_array_equal(out_sd[key + "_beta"], out_plain[key])
    np.testing.assert_array_equal(out_sd["energy"], out_plain["energy"])


def test_forces_are_minus_the_energy_gradient():
    with jax.enable_x64(True):
        model = helm.build_model(_config("sum_diff", dtype="float64"), T631)
        budget = batching.Budget(5, 12, 2)
        b = batching.pad_batch([_graph(*CH3, 0, 1)], budget, None, None, np.float64)
        inputs = helm.batch_inputs(b)
        num_graphs = inputs.pop("num_graphs")
        params = jax.tree.map(lambda x: np.asarray(x, np.float64), _model("sum_diff")[1])
        ef = jax.jit(lambda p, i: helm.energy_and_forces(model, p, {**i,
                                                                   "num_graphs": num_graphs}))
        energy, forces = jax.device_get(ef(params, inputs))
        assert np.all(forces[4:] == 0) and np.abs(forces[:4]).max() > 1e-4
        eps = 1e-5
        for atom, axis in ((0, 2), (1, 0), (3, 1)):
            es = []
            for sign in (1, -1):
                pos = np.array(inputs["positions"])
                pos[atom, axis] += sign * eps
                es.append(float(ef(params, {**inputs, "positions": pos})[0][0]))
            fd = -(es[0] - es[1]) / (2 * eps)
            assert forces[atom, axis] == pytest.approx(fd, rel=1e-6, abs=1e-9)
        # Another spin, same geometry: another energy surface, with its own forces.
        b3 = batching.pad_batch([_graph(*CH3, 0, 3)], budget, None, None, np.float64)
        e3, f3 = jax.device_get(ef(params, {**inputs, "spin": b3.globals["spin"]}))
        assert abs(float(e3[0]) - float(energy[0])) > 1e-6
        assert np.abs(f3 - forces).max() > 1e-8


# -- training ------------------------------------------------------------------------------


class _ListReader:
    """The reader interface ``datasets.load_data`` reads, over in-memory records."""

    kind = "test"
    path = "in-memory"

    def __init__(self, records, basis_name):
        self.records, self.basis, self.ecp = records, basis_name, None

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def converged_indices(self):
        return np.arange(len(self.records))


@pytest.fixture(scope="module")
def ch3_svp():
    return _uhf_record(*CH3, "def2-svp", key="ch3")


_SVP_PARAMS = {}


# Slow: compiles and trains two l_max = 4 models for 300 steps (~2 min on 2 cores).
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_tiny_model_overfits_a_radicals_alpha_and_beta_blocks(ch3_svp, mode, monkeypatch):
    """The training path (load_data -> model_and_losses -> make_train_step) on one CH3
    radical in def2-SVP: both spins' H MAE fall far below the alpha-beta difference of the
    labels (a model predicting alpha = beta is off by half of it)."""
    c = _config(mode, l_max=4)
    c.data.split.update(train=1, val=0, test=None)
    c.data.batch.update(molecules_per_batch=1, num_buckets=1)
    monkeypatch.setattr(datasets, "open_reader", lambda cfg: _ListReader([ch3_svp],
                                                                         "def2-svp"))
    data = train.load_data(c)
    assert data.spec.spin_resolved and data.spec.charge_spin_embedding
    model, weights, need, ctx = train.model_and_losses(c, data)
    it = pipeline.BatchIterator(data.graphs, data.splits["train"], datasets.batch_config(c.data),
                                stats=data.stats, prefetch=0)
    batch = it.make_batch(*it.plan(0)[0])
    assert "h_beta" in batch.nodes and int(batch.globals["spin"][0, 0]) == 1
    one = jax.tree.map(lambda x: x[0], batch)
    if "svp" not in _SVP_PARAMS:  # one initialisation for both modes (see _derive)
        superset = helm.build_model(_config("sum_diff", l_max=4), data.template)
        _SVP_PARAMS["svp"] = _init(superset, one)
    params = _derived_params(model, _SVP_PARAMS["svp"], mode, True, one)
    tx = optax.adam(optax.exponential_decay(1e-2, 100, 0.5))
    mesh = parallel.make_mesh(1)
    step = parallel.data_parallel(train.make_train_step(model, tx, ctx, weights, need), mesh)
    state = parallel.replicate(train.TrainState.create(
        params, tx, train.plateau_schedule(c.optim), 0), mesh)
    batch = parallel.shard(batch, mesh)
    first = None
    for _ in range(300):
        state, metrics = step(state, batch)
        first = first or jax.device_get(metrics)
    last = jax.device_get(metrics)
    spin_gap = np.abs(ch3_svp.fock - ch3_svp.fock_beta).mean()  # 0.0139 Eh
    assert spin_gap > 1e-2
    for key in ("h_mae_alpha", "h_mae_beta"):  # 3.0-3.6e-4 Eh after 300 steps (from 0.15-0.17)
        assert last[key] < 0.05 * spin_gap, (key, first[key], last[key], spin_gap)
        assert last[key] < first[key] / 100, (key, first[key], last[key])
    assert last["h_mae"] == pytest.approx((last["h_mae_alpha"] + last["h_mae_beta"]) / 2,
                                          rel=1e-4)
    assert last["loss"] < 2e-3, (first["loss"], last["loss"])  # 8.4e-4-1.0e-3 (from 0.34-0.37)


def test_losses_sum_over_both_spins(labelled):
    ch3, water = labelled
    dims = (SPEC.node_layout.dim, SPEC.edge_layout.dim)
    gs = [graphs.build_graph(ch3, SPEC), graphs.build_graph(water, SPEC)]
    b = batching.pad_batch(gs, batching.Budget(8, 18, 3), *dims, np.float64,
                           spin_resolved=True)
    ctx = losses.LossContext.create(SPEC.node_layout, SPEC.edge_layout, None)
    rng = np.random.default_rng(0)
    noise = {k: rng.normal(size=b.nodes["h"].shape if k.startswith("node")
                           else b.edges["h"].shape) * 1e-2
             for k in ("node_h", "edge_h", "node_h_beta", "edge_h_beta")}
    with jax.enable_x64(True):
        out = {"node_h": b.nodes["h"] + noise["node_h"],
               "edge_h": b.edges["h"] + noise["edge_h"],
               "node_h_beta": b.nodes["h_beta"] + noise["node_h_beta"],
               "edge_h_beta": b.edges["h_beta"] + noise["edge_h_beta"]}
        out = jax.tree.map(jnp.asarray, out)
        alpha = {"node_h": out["node_h"], "edge_h": out["edge_h"]}
        parts = {"mae": losses.hamiltonian_mae(out, b, ctx),
                 "mae_a": losses.hamiltonian_mae_alpha(out, b, ctx),
                 "mae_b": losses.hamiltonian_mae_beta(out, b, ctx),
                 "h": losses.hamiltonian(out, b, ctx),
                 "h_alpha": losses.hamiltonian(alpha, b, ctx),
                 "mae_restricted": losses.hamiltonian_mae(alpha, b, ctx)}
        v = {k: float(p.combine(p.sums)) for k, p in parts.items()}
        n = {k: float(p.sums["n"]) for k, p in parts.items()}
        se = {k: float(p.sums["se"]) for k, p in parts.items() if "se" in p.sums}
        err_n, mask_n = losses.node_error(out, b, ctx)
    assert err_n.shape[0] == 2 * b.nodes["h"].shape[0] and mask_n.shape == err_n.shape
    assert n["mae"] == n["mae_a"] + n["mae_b"] and n["mae_a"] == n["mae_b"] > 0
    assert v["mae"] == pytest.approx((v["mae_a"] + v["mae_b"]) / 2, rel=1e-12)
    assert v["mae_a"] == pytest.approx(v["mae_restricted"], rel=1e-12)
    assert abs(v["mae_a"] - v["mae_b"]) > 1e-3 * v["mae_a"]  # different noise
    # The squared error over both spins: the alpha sum plus the beta noise's.
    assert n["h"] == 2 * n["h_alpha"]
    mse = se["h"] / n["h"]
    assert v["h"] == pytest.approx(np.sqrt(mse) + mse, rel=1e-12)
    assert se["h"] > se["h_alpha"] * 1.5


# -- prediction and checkpoints ------------------------------------------------------------


def _predictor(mode, embed=True):
    from helm_jax import predict
    c = _config(mode, embed=embed)
    stats = statistics.compute_statistics([], SPEC.node_layout, edge_layout=SPEC.edge_layout)
    params = _model(mode, embed)[1]  # the statistics do not change the parameter shapes
    loaded = checkpoint.LoadedModel(config=c, template=T631, stats=stats, params=params,
                                    step=0, meta={})
    return predict.Predictor(loaded)


def test_predictor_returns_both_spins_and_a_uks_guess():
    from pyscf import dft
    predictor = _predictor("sum_diff")
    radical = molecules.pyscf_mol(*CH3, "6-31g", spin=1)
    water = molecules.pyscf_mol(*molecules.WATER, "6-31g")
    h_rad, h_w = predictor.predict_hamiltonian([radical, water])
    assert h_rad.shape == (2, radical.nao, radical.nao) and h_w.shape == (water.nao,) * 2
    assert np.abs(h_rad[0] - h_rad[1]).max() > 1e-4
    np.testing.assert_allclose(h_rad, np.swapaxes(h_rad, 1, 2), atol=1e-12)
    dm = predictor.initial_guess(radical)
    s = radical.intor("int1e_ovlp")
    assert dm.shape == (2, radical.nao, radical.nao)
    n_alpha, n_beta = radical.nelec
    assert (n_alpha, n_beta) == (5, 4)
    for k, n in enumerate((n_alpha, n_beta)):
        assert np.trace(dm[k] @ s) == pytest.approx(n, abs=1e-8)
        np.testing.assert_allclose(dm[k] @ s @ dm[k], dm[k], atol=1e-8)  # idempotent
    mf = dft.UKS(radical)
    mf.xc, mf.max_cycle, mf.grids.level = "pbe", 3, 0
    energy = mf.kernel(dm0=dm)
    assert np.isfinite(energy) and energy < -30  # CH3: about -39.7 Eh
    # ASE Atoms: charge and spin (2S) from atoms.info.
    from ase import Atoms
    from helm_jax import predict
    atoms = Atoms(CH3[0], positions=CH3[1], info={"spin": 1, "charge": 0})
    rec = predict.to_record(atoms, T631)
    assert (rec.charge, rec.spin) == (0, 1)
    assert predict.to_record(Atoms("OH", positions=OH[1], info={"multiplicity": 2}),
                             T631).spin == 1
    assert predict.to_record(radical, T631).spin == 1
    np.testing.assert_allclose(predictor.predict_hamiltonian(atoms), h_rad, atol=1e-5)


def test_predictor_of_a_restricted_model_refuses_open_shells():
    predictor = _predictor("none", embed=False)
    radical = molecules.pyscf_mol(*CH3, "6-31g", spin=1)
    with pytest.raises(ValueError, match="--config.heads.spin=sum_diff"):
        predictor.predict_hamiltonian(radical)
    with pytest.raises(ValueError, match="charge_spin_embedding=True"):
        predictor.initial_guess(radical)
    water = molecules.pyscf_mol(*molecules.WATER, "6-31g")
    assert predictor.predict_hamiltonian(water).shape == (water.nao, water.nao)


def test_checkpoints_keep_the_open_shell_settings(tmp_path):
    c = _config("alpha_beta")
    params = _model("alpha_beta")[1]
    stats = statistics.compute_statistics([], SPEC.node_layout, edge_layout=SPEC.edge_layout)
    meta = checkpoint.make_meta(c, T631, stats, step=0)
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(0, params, {"step": 0}, meta)
    loaded = checkpoint.load_model(str(tmp_path), which="latest")
    assert loaded.config.model.charge_spin_embedding is True
    assert loaded.config.heads.spin == "alpha_beta"
    assert helm.build_model(loaded.config, loaded.template, loaded.stats).spin_resolved
    assert set(loaded.params["hamiltonian_head"]) == {"node", "edge", "node_beta", "edge_beta"}
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    # A config saved before these fields existed: the restricted defaults.
    saved = base.get_config().to_dict()
    del saved["model"]["charge_spin_embedding"], saved["heads"]["spin"]
    old = configs.complete(saved)
    assert old.model.charge_spin_embedding is False and old.heads.spin == "none"
