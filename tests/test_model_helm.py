"""The full HELM model (backbone + Hamiltonian head + energy head) on real molecules.

The decisive check: the assembled predicted H (PySCF AO order) of a rotated molecule equals
``D H D^T`` with D from ``helm_jax.sph`` (the same algebra PySCF obeys, tests/test_sph_rotation.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helm_jax import basis, blocks, sph
from helm_jax.configs import base
from helm_jax.data import batching, graphs
from helm_jax.data.records import Record
from helm_jax.model import assemble, helm
from equivariance_checks import (assert_equivariant, pole_rotations, random_rotation,
                                 rotate_vectors)
import molecules

SVP = basis.make_template("HCNO", "def2-svp")


def _config(l_max, channels=8, layers=1, dtype="float32"):
    c = base.get_config()
    c.model.update(channels=channels, num_layers=layers, l_max=l_max, m_max=min(l_max, 3),
                   num_rbf=8, edge_channels_hidden=8, ffn_channels=8, cutoff=6.0, dtype=dtype,
                   param_dtype=dtype)
    c.heads.update(hidden=16, energy_hidden=16)
    return c


def _batch(symbols, coords, template, cutoff=6.0, extra_nodes=1, extra_edges=0, dtype=np.float32):
    z = np.array([basis.atomic_number(s) for s in symbols])
    g = graphs.build_graph(Record(elements=z, coords=coords), graphs.GraphSpec(template, cutoff),
                           with_labels=False)
    budget = batching.Budget(g.n_node + extra_nodes, g.n_edge + extra_edges, 2)
    return g, batching.pad_batch([g], budget, None, None, dtype)


def _full_h(model, params, symbols, coords, template, **kw):
    g, b = _batch(symbols, coords, template, **kw)
    out = model.apply({"params": params}, **helm.batch_inputs(b))
    layouts = (blocks.irreps_layout(template, True), blocks.irreps_layout(template))
    return assemble.batch_to_full(jax.device_get(out), b, *layouts, None)[0], out, g


def _d(symbols, template, rot):
    ls = []
    for s in symbols:
        ls += template.element(s).shell_l
    return sph.molecule_ao_wigner(ls, rot)


def _rotate_h(symbols, template):
    """rotate_outputs for (H, *invariants): H -> D H D^T, the rest unchanged."""
    def rotate(rot, out):
        d = _d(symbols, template, rot)
        return (d @ out[0] @ d.T, *out[1:])
    return rotate


@pytest.fixture(scope="module")
def svp_model():
    model = helm.build_model(_config(4), SVP)
    _, b = _batch(*molecules.ETHANOL, SVP)
    inputs = helm.batch_inputs(b)
    num_graphs = inputs.pop("num_graphs")
    # Jitted: the same parameters as the eager init, in less than half the time.
    params = jax.jit(lambda key, i: model.init(key, **i, num_graphs=num_graphs))(
        jax.random.PRNGKey(0), inputs)["params"]
    return model, params


@pytest.mark.parametrize("rotation", ["random", "bond_on_y", "bond_on_z"])
def test_assembled_h_is_equivariant_float32(svp_model, rotation):
    model, params = svp_model
    symbols, coords = molecules.ETHANOL
    rot = pole_rotations(5, onto_y=coords[1] - coords[0], onto_z=coords[2] - coords[0])[rotation]

    def h_and_energy(c):
        h, out, _ = _full_h(model, params, symbols, c, SVP)
        return h, out["energy"]

    # H: relative to its largest element; the energies: elementwise rtol.
    assert_equivariant(h_and_energy, coords, rotate_vectors, _rotate_h(symbols, SVP),
                       rotations={rotation: rot}, atol=(1e-5, 0.0), rtol=(0.0, 1e-5),
                       relative=(True, False))


@pytest.mark.slow
def test_assembled_h_is_equivariant_float64_lmax6_tzvpd():
    template = basis.make_template(basis.OMOL_CSH_ELEMENTS, "def2-tzvpd", "def2-tzvpd")
    symbols, coords = molecules.METHYL_IODIDE
    with jax.enable_x64(True):
        model = helm.build_model(_config(6, channels=4, dtype="float64"), template)
        _, b = _batch(symbols, coords, template, dtype=np.float64)
        params = model.init(jax.random.PRNGKey(1), **helm.batch_inputs(b))["params"]
        h0, _, _ = _full_h(model, params, symbols, coords, template, dtype=np.float64)
        assert np.abs(h0).max() > 1e-3
        assert_equivariant(
            lambda c: (_full_h(model, params, symbols, c, template, dtype=np.float64)[0],),
            coords, rotate_vectors, _rotate_h(symbols, template),
            rotations=[random_rotation(9)], atol=1e-10, relative=True, outputs=(h0,))


def test_forces_rotate_and_are_finite(svp_model):
    model, params = svp_model
    symbols, coords = molecules.ETHANOL

    @functools.partial(jax.jit, static_argnums=2)
    def energy_and_forces(p, inputs, num_graphs):
        return helm.energy_and_forces(model, p, {**inputs, "num_graphs": num_graphs})

    def forces(c):
        _, b = _batch(symbols, c, SVP)
        inputs = helm.batch_inputs(b)
        g_count = inputs.pop("num_graphs")
        return np.asarray(energy_and_forces(params, inputs, g_count)[1])

    f0 = forces(coords)
    assert np.all(np.isfinite(f0))
    assert np.all(f0[9:] == 0)  # padding node
    assert_equivariant(forces, coords, rotate_vectors, rotate_vectors,
                       rotations=[random_rotation(3)], atol=1e-5, outputs=f0)


def test_permutation_and_translation(svp_model):
    model, params = svp_model
    symbols, coords = molecules.ETHANOL
    h0, _, _ = _full_h(model, params, symbols, coords, SVP)
    h_t, _, _ = _full_h(model, params, symbols, coords + np.array([3.0, -2.0, 1.0]), SVP)
    np.testing.assert_allclose(h_t, h0, atol=1e-5 * np.abs(h0).max())
    perm = np.array([2, 0, 1, 5, 3, 4, 8, 6, 7])
    h_p, _, _ = _full_h(model, params, [symbols[i] for i in perm], coords[perm], SVP)
    sl = basis.molecule_ao_slices([basis.atomic_number(s) for s in symbols], "def2-svp")
    idx = np.concatenate([np.arange(sl[i].start, sl[i].stop) for i in perm])
    np.testing.assert_allclose(h_p, h0[np.ix_(idx, idx)], atol=1e-5 * np.abs(h0).max())


@pytest.mark.slow
def test_padding_and_packing_invariance(svp_model):
    model, params = svp_model
    sym_e, xyz_e = molecules.ETHANOL
    sym_w, xyz_w = molecules.WATER
    spec = graphs.GraphSpec(SVP, 6.0)
    ge = graphs.build_graph(Record(elements=np.array([basis.atomic_number(s) for s in sym_e]),
                                   coords=xyz_e), spec, with_labels=False)
    gw = graphs.build_graph(Record(elements=np.array([8, 1, 1]), coords=xyz_w), spec,
                            with_labels=False)
    outs = []
    for gs, budget in [([ge], batching.Budget(10, 72, 2)),
                       ([ge], batching.Budget(17, 100, 4)),
                       ([gw, ge], batching.Budget(20, 90, 3))]:
        b = batching.pad_batch(gs, budget, None, None)
        inputs = helm.batch_inputs(b)
        g_count = inputs.pop("num_graphs")
        out = jax.device_get(jax.jit(lambda p, i: model.apply({"params": p}, **i,
                                                               num_graphs=g_count))(params,
                                                                                    inputs))
        off_n = 3 if len(gs) == 2 else 0
        off_e = 6 if len(gs) == 2 else 0
        outs.append((out["node_h"][off_n:off_n + 9], out["edge_h"][off_e:off_e + 72],
                     out["energy"][len(gs) - 1]))
        assert np.all(out["node_h"][sum(g.n_node for g in gs):] == 0)  # padded rows
        assert np.all(out["edge_h"][sum(g.n_edge for g in gs):] == 0)
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_determinism_and_energy_only_path(svp_model):
    model, params = svp_model
    _, b = _batch(*molecules.ETHANOL, SVP)
    inputs = helm.batch_inputs(b)
    f = jax.jit(lambda p: model.apply({"params": p}, **inputs))
    a, c = jax.device_get(f(params)), jax.device_get(f(params))
    for k in a:
        np.testing.assert_array_equal(a[k], c[k])
    e_only = model.apply({"params": params}, **inputs, hamiltonian=False)
    assert set(e_only) == {"energy"}
    np.testing.assert_allclose(e_only["energy"], a["energy"], rtol=1e-6)


@pytest.mark.slow
def test_padded_rows_get_zero_gradient(svp_model):
    model, params = svp_model
    _, b = _batch(*molecules.ETHANOL, SVP, extra_nodes=3, extra_edges=6)
    inputs = helm.batch_inputs(b)

    def total(pos):
        out = model.apply({"params": params}, **{**inputs, "positions": pos})
        return jnp.sum(out["node_h"] ** 2) + jnp.sum(out["edge_h"] ** 2) + out["energy"].sum()
    g = np.asarray(jax.jit(jax.grad(total))(inputs["positions"]))
    assert np.all(np.isfinite(g)) and np.all(g[9:] == 0) and np.abs(g[:9]).max() > 0


@pytest.mark.slow
def test_tiny_model_overfits_one_hamiltonian():
    from pyscf import scf
    symbols, coords = molecules.WATER
    mol = molecules.pyscf_mol(symbols, coords, "def2-svp")
    mf = scf.RHF(mol).run(conv_tol=1e-10)
    z = np.array([8, 1, 1])
    template = basis.make_template([1, 8], "def2-svp")
    spec = graphs.GraphSpec(template, 6.0)
    g = graphs.build_graph(Record(elements=z, coords=coords, fock=mf.get_fock()), spec)
    b = batching.pad_batch([g], batching.Budget(4, 6, 2), spec.node_layout.dim,
                           spec.edge_layout.dim)
    model = helm.build_model(_config(4, channels=16), template)
    inputs = helm.batch_inputs(b)
    params = model.init(jax.random.PRNGKey(0), **inputs)["params"]
    node_t, edge_t = jnp.asarray(b.nodes["h"][:3]), jnp.asarray(b.edges["h"])
    table = graphs.slot_mask_table(template)
    mn = graphs.label_masks(z, z, spec.node_layout, table)
    me = graphs.label_masks(z[g.senders], z[g.receivers], spec.edge_layout, table)

    def loss(p):
        out = model.apply({"params": p}, **inputs)
        se = (jnp.sum(jnp.where(mn, out["node_h"][:3] - node_t, 0) ** 2)
              + jnp.sum(jnp.where(me, out["edge_h"] - edge_t, 0) ** 2))
        mse = se / (mn.sum() + me.sum())
        return jnp.sqrt(mse) + mse

    def mae(p):
        h = _full_from(model, p, b, spec)
        return np.abs(h - mf.get_fock()).mean()

    tx = optax.adam(optax.exponential_decay(1e-2, 100, 0.5))
    opt = tx.init(params)

    @jax.jit
    def step(p, o):
        grads = jax.grad(loss)(p)
        u, o = tx.update(grads, o, p)
        return optax.apply_updates(p, u), o

    start = mae(params)
    for _ in range(400):
        params, opt = step(params, opt)
    end = mae(params)
    assert end < start / 100, (start, end)


def _full_from(model, params, b, spec):
    out = jax.device_get(model.apply({"params": params}, **helm.batch_inputs(b)))
    return assemble.batch_to_full(out, b, spec.node_layout, spec.edge_layout, None)[0]


def test_label_scales_multiply_each_degree_of_the_head_output(svp_model):
    """heads.label_scale: the head's per-l units are folded into its last linear maps, so the
    same parameters give exactly scale_l times the unit-scale irreps of each degree l."""
    import dataclasses
    model, params = svp_model
    _, b = _batch(*molecules.ETHANOL, SVP)
    base = model.apply({"params": params}, **helm.batch_inputs(b))
    n_scales = tuple(0.1 * (l + 1) for l in range(len(model.node_muls)))
    e_scales = tuple(0.03 + l for l in range(len(model.edge_muls)))
    scaled = dataclasses.replace(model, node_scales=n_scales, edge_scales=e_scales).apply(
        {"params": params}, **helm.batch_inputs(b))
    for key, muls, scales in (("node_h", model.node_muls, n_scales),
                              ("edge_h", model.edge_muls, e_scales)):
        factor = np.concatenate([np.full(m * (2 * l + 1), scales[l])
                                 for l, m in enumerate(muls)])
        np.testing.assert_allclose(scaled[key], base[key] * factor, rtol=2e-5, atol=1e-6)  # f32
    assert np.abs(base["edge_h"]).max() > 0.1  # not a vacuous comparison of zeros


def test_init_scale_scales_every_fan_in_weight_and_nothing_else(svp_model):
    _, params = svp_model
    scaled = helm.scale_initial_weights(params, 1 / 3)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_scaled = dict(jax.tree_util.tree_flatten_with_path(scaled)[0])
    kinds = set()
    for path, x in flat:
        name = str(getattr(path[-1], "key", path[-1]))
        weight = name == "kernel" or name.startswith("linear_l")
        kinds.add(name if not weight else "weight")
        factor = np.sqrt(1 / 3) if weight else 1.0
        np.testing.assert_allclose(np.asarray(flat_scaled[path]), np.asarray(x) * factor,
                                   rtol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert {"weight", "embedding", "bias", "scale"} <= kinds  # both kinds were present
    assert helm.scale_initial_weights(params, 1.0) is params
    c = _config(4)
    c.model.init_scale = 1 / 3  # a config field, but not a backbone attribute
    assert helm.build_model(c, SVP).backbone == helm.build_model(_config(4), SVP).backbone


def test_edge_element_embeddings_start_small(svp_model):
    """config.model.edge_embedding_std: the element embeddings of x_edge start at std 1e-3
    (the default), so the radial basis carries x_edge at initialisation; the node
    embedding keeps std 1."""
    model, params = svp_model
    assert model.backbone.edge_embedding_std == 1e-3
    bb = params["backbone"]
    for name in ("source_embedding", "target_embedding"):
        std = float(np.std(np.asarray(bb[name]["embedding"])))
        assert 0.9e-3 < std < 1.1e-3, (name, std)
    assert 0.9 < float(np.std(np.asarray(bb["node_embedding"]["embedding"]))) < 1.1
