"""The model on periodic graphs: edges (i, j, T), equivariance with cells, gauge and origin
invariance, padding and batching, and a tiny model that learns one graphene cell's bands.

Unlabelled tests use a randomly initialised float64 model; H(k) is assembled by the
production path (``helm_jax.kspace.bloch_entries`` + ``hamiltonian_k``, the Hermitian part of
the Bloch sum of the predicted blocks).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helm_jax import basis, kspace, losses, sph
from helm_jax.configs import base
from helm_jax.data import batching, graphs, periodic
from helm_jax.data.records import Record
from helm_jax.data.statistics import compute_statistics
from helm_jax.model import helm
from equivariance_checks import random_rotation

SZV = basis.make_template([5, 6, 7], "gth-szv", "")
A_HBN = 2.50
HBN_CELL = np.array([[A_HBN, 0, 0], [-A_HBN / 2, A_HBN * np.sqrt(3) / 2, 0], [0, 0, 15.0]])
HBN_PBC = np.array([True, True, False])
# A distorted h-BN cell: B near the origin, N at (2/3, 1/3) with an out-of-plane offset.
HBN_XYZ = np.array([[0.03, -0.02, 7.5], [0.0, 0.0, 7.5]]) + np.array(
    [[0, 0, 0], [*(np.array([2 / 3, 1 / 3]) @ HBN_CELL[:2, :2]), 0.05]])
DIAMOND_CELL = 1.7835 * (np.ones((3, 3)) - np.eye(3))
DIAMOND_XYZ = np.array([[0.0, 0.0, 0.0], [0.90, 0.88, 0.895]])
CUTOFF = 4.6  # away from the 2a = 5.0 A shell, which rounding would split
KPTS = np.array([[0.0, 0.0, 0.0], [0.13, 0.37, 0.0], [1 / 3, 1 / 3, 0.0], [0.5, 0.21, 0.0]])


def _config(dtype="float64"):
    c = base.get_config()
    base.tiny_model(c, l_max=2)
    c.model.update(channels=8, num_layers=2, cutoff=CUTOFF, dtype=dtype, param_dtype=dtype,
                   num_rbf=8, edge_channels_hidden=8, ffn_channels=8)
    c.heads.update(hidden=16, energy_hidden=16)
    return c


def _graph(z, xyz, cell, pbc, cutoff=CUTOFF):
    spec = graphs.GraphSpec(SZV, cutoff, periodic=True)
    return graphs.build_graph(Record(elements=np.asarray(z), coords=np.asarray(xyz),
                                     cell=cell, pbc=pbc), spec, with_labels=False)


def _batch(gs, extra_nodes=1, extra_edges=0, extra_graphs=1):
    budget = batching.Budget(sum(g.n_node for g in gs) + extra_nodes,
                             sum(g.n_edge for g in gs) + extra_edges, len(gs) + extra_graphs)
    return batching.pad_batch(gs, budget, None, None, np.float64, periodic=True,
                              template=SZV), budget


@pytest.fixture(scope="module", name="model")
def fixture_model():
    with jax.enable_x64(True):
        model = helm.build_model(_config(), SZV)
        b, _ = _batch([_graph([5, 7], HBN_XYZ, HBN_CELL, HBN_PBC)])
        params = model.init(jax.random.PRNGKey(3), **helm.batch_inputs(b))["params"]
    return model, params


def _outputs(model, params, gs, **kw):
    with jax.enable_x64(True):
        b, budget = _batch(gs, **kw)
        out = jax.device_get(model.apply({"params": params}, **helm.batch_inputs(b)))
    return out, b, budget


def _hk(model, params, g, kpts=KPTS):
    """H(k) [K, n, n] of one graph's predicted blocks (and its AO count)."""
    out, b, budget = _outputs(model, params, [g])
    node_layout, edge_layout = graphs.layouts_for(SZV, True)
    flat = np.concatenate([node_layout.irreps_to_blocks(out["node_h"]).ravel(),
                           edge_layout.irreps_to_blocks(out["edge_h"]).ravel()])
    src, dest, edge = kspace.bloch_entries(g.species, g.senders, g.receivers, SZV,
                                           n_node_batch=budget.n_node)
    n = int(sum(len(SZV.ao_map(int(z))) for z in g.species))
    with jax.enable_x64(True):
        hk = kspace.hamiltonian_k(jnp.asarray(flat), src, dest, edge,
                                  jnp.asarray(b.edges["translation"]), jnp.asarray(kpts), n)
    return np.asarray(hk), out


def _ao_wigner(z, rot):
    return sph.molecule_ao_wigner([l for zi in z for l in SZV.element(int(zi)).shell_l], rot)


def test_periodic_edges_include_images_and_self_images():
    g = _graph([5, 7], HBN_XYZ, HBN_CELL, HBN_PBC)
    pairs = periodic.image_pairs(HBN_XYZ, HBN_CELL, HBN_PBC, CUTOFF)
    assert g.n_edge == len(pairs) > 40
    vectors = HBN_XYZ[g.receivers] + g.shifts - HBN_XYZ[g.senders]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), pairs.distance, atol=1e-12)
    self_images = g.senders == g.receivers
    assert self_images.sum() == 24  # 12 own images within 4.6 A (at a and sqrt(3) a) per atom
    assert np.all(np.abs(g.translations[:, 2]) == 0)  # nothing across the vacuum
    # Every (i, j, T) has its reverse (j, i, -T): the Hermitian pair of blocks.
    keys = {(int(i), int(j), *map(int, t)) for i, j, t in zip(g.senders, g.receivers,
                                                                  g.translations)}
    assert all((j, i, -t1, -t2, -t3) in keys for i, j, t1, t2, t3 in keys)
    b, _ = _batch([g])
    mask = batching.edge_mask(b.nodes["species"], b.senders, b.receivers)
    assert mask.sum() == g.n_edge  # real self-image edges count, padding edges do not


def test_rotating_cell_and_atoms_rotates_every_block_and_keeps_the_bands(model):
    model_, params = model
    rot = random_rotation(11)
    g = _graph([5, 7], HBN_XYZ, HBN_CELL, HBN_PBC)
    g_rot = _graph([5, 7], HBN_XYZ @ rot.T, HBN_CELL @ rot.T, HBN_PBC)
    np.testing.assert_array_equal(g.translations, g_rot.translations)  # same (i, j, T)
    hk, out = _hk(model_, params, g)
    hk_rot, out_rot = _hk(model_, params, g_rot)
    # Every predicted H_ij(T) block (edges) and on-site block: D_i B D_j^T.
    node_layout, edge_layout = graphs.layouts_for(SZV, True)
    maps = [SZV.ao_map(z) for z in (5, 7)]
    d_atom = [_ao_wigner([z], rot) for z in (5, 7)]
    for layout, key, pairs in ((edge_layout, "edge_h", zip(g.senders, g.receivers)),
                               (node_layout, "node_h", ((a, a) for a in range(2)))):
        blocks, blocks_rot = (layout.irreps_to_blocks(o[key]) for o in (out, out_rot))
        for e, (a, b) in enumerate(pairs):
            blk = blocks[e][np.ix_(maps[a], maps[b])]
            want = d_atom[a] @ blk @ d_atom[b].T
            got = blocks_rot[e][np.ix_(maps[a], maps[b])]
            assert np.abs(got - want).max() < 1e-10 * max(np.abs(blk).max(), 1e-3), (key, e)
    d = _ao_wigner([5, 7], rot)
    expected = np.einsum("ab,kbc,dc->kad", d, hk, d)
    assert np.abs(hk).max() > 1e-2
    err = np.abs(hk_rot - expected).max() / np.abs(hk).max()
    assert err < 1e-10, err
    # Bands with a rotated overlap (any S(k) rotating with D): unchanged.
    s_k = np.eye(hk.shape[-1])[None] * np.ones((len(KPTS), 1, 1))
    s_k = s_k + 0.1 * np.real(hk) / np.abs(hk).max()
    s_k = 0.5 * (s_k + np.swapaxes(s_k, -1, -2)) + 2 * np.eye(hk.shape[-1])
    bands = periodic.bands(hk, s_k)
    bands_rot = periodic.bands(hk_rot, np.einsum("ab,kbc,dc->kad", d, s_k, d))
    np.testing.assert_allclose(bands_rot, bands, atol=1e-10)


def test_wrapping_an_atom_or_moving_the_origin_changes_nothing_physical(model):
    model_, params = model
    g = _graph([5, 7], HBN_XYZ, HBN_CELL, HBN_PBC)
    hk, out = _hk(model_, params, g)
    # Atom 1 wrapped by -a1 + a2: its edges relabel T -> T + delta_i - delta_j and H(k)
    # changes by the gauge U = diag(exp(2 pi i k . delta_atom)) only.
    delta = np.array([[0, 0, 0], [-1, 1, 0]])
    g_w = _graph([5, 7], HBN_XYZ + delta @ HBN_CELL, HBN_CELL, HBN_PBC)
    hk_w, _ = _hk(model_, params, g_w)
    ao_atom = np.concatenate([[i] * len(SZV.ao_map(z)) for i, z in enumerate([5, 7])])
    u = np.exp(2j * np.pi * KPTS @ delta[ao_atom].T)  # [K, n]
    expected = u[:, :, None] * hk * u[:, None, :].conj()
    assert np.abs(hk_w - expected).max() < 1e-10 * np.abs(hk).max()
    np.testing.assert_allclose(np.linalg.eigvalsh(hk_w), np.linalg.eigvalsh(hk), atol=1e-10)
    # The whole structure moved (a new cell origin): identical blocks.
    _, out_t = _hk(model_, params, _graph([5, 7], HBN_XYZ + np.array([1.3, -0.4, 2.0]),
                                          HBN_CELL, HBN_PBC))
    for key in ("node_h", "edge_h"):
        np.testing.assert_allclose(out_t[key], out[key], atol=1e-12)


def test_padding_and_batching_periodic_graphs(model):
    model_, params = model
    g1 = _graph([5, 7], HBN_XYZ, HBN_CELL, HBN_PBC)
    g2 = _graph([6, 6], DIAMOND_XYZ, DIAMOND_CELL, np.array([True, True, True]))
    assert g2.n_edge > 2 * g1.n_edge  # 3-D: images along every axis
    alone = [_outputs(model_, params, [g])[0] for g in (g1, g2)]
    both, _, _ = _outputs(model_, params, [g1, g2], extra_nodes=3, extra_edges=17,
                          extra_graphs=2)
    n1, e1 = g1.n_node, g1.n_edge
    for key, rows in (("node_h", (n1, g2.n_node)), ("edge_h", (e1, g2.n_edge))):
        np.testing.assert_allclose(both[key][:rows[0]], alone[0][key][:rows[0]], atol=1e-12)
        np.testing.assert_allclose(both[key][rows[0]:rows[0] + rows[1]],
                                   alone[1][key][:rows[1]], atol=1e-12)
        assert np.all(both[key][rows[0] + rows[1]:] == 0)  # padding rows
    np.testing.assert_allclose(both["energy"][:2], [a["energy"][0] for a in alone],
                               rtol=1e-12)


GRAPHENE_CELL = np.array([[2.46, 0, 0], [-1.23, 2.46 * np.sqrt(3) / 2, 0], [0, 0, 15.0]])


@pytest.fixture(scope="module", name="graphene")
def fixture_graphene():
    """One distorted graphene cell labelled by the project's labeller (GTH-SZV, 3x3x1,
    Fermi-Dirac smearing 0.01 Eh): a Record with periodic labels."""
    from helm_jax.data import geometry, labelling_pbc
    frac = np.array([[0.0, 0.0, 0.5], [2 / 3, 1 / 3, 0.5]])
    xyz = frac @ GRAPHENE_CELL + np.array([[0.02, -0.03, 0.0], [-0.01, 0.02, 0.04]])
    structure = geometry.Structure(elements=np.array([6, 6]), coords=xyz,
                                   cell=GRAPHENE_CELL, pbc=np.array([True, True, False]),
                                   charge=0, spin=0, source="test")
    settings = labelling_pbc.PeriodicSettings(method="pbe", basis="gth-szv", pseudo="gth-pbe",
                                              kmesh=(3, 3, 1), smearing=0.01)
    lab = labelling_pbc.label_structure(structure, settings)
    return Record(elements=structure.elements, coords=xyz, cell=GRAPHENE_CELL,
                  pbc=structure.pbc, periodic=lab.labels, energy=lab.energy, key="graphene")


@pytest.mark.slow
def test_tiny_model_overfits_one_graphene_cells_bands(graphene):
    """A tiny float32 model trained on the bands of one cell (plus its real-space blocks)
    reaches band errors far below the start: valence and two conduction bands on the mesh."""
    import optax
    spec = graphs.GraphSpec(SZV, 6.0, periodic=True, bands=True)
    g = graphs.build_graph(graphene, spec)
    assert g.kspace.n_occ == 4 and g.kspace.band_count == 6
    stats = compute_statistics([g], spec.node_layout, node_reference="shift",
                               edge_layout=spec.edge_layout)
    n_ao, n_k, n_entries = batching.kspace_sizes(g, SZV)
    budget = batching.Budget(g.n_node + 1, g.n_edge, 2, n_ao=n_ao, n_k=n_k,
                             n_entries=n_entries)
    batch = jax.tree.map(jnp.asarray, batching.pad_batch(
        [g], budget, spec.node_layout.dim, spec.edge_layout.dim, periodic=True, template=SZV))
    c = _config("float32")
    c.model.update(channels=16, cutoff=6.0)
    model = helm.build_model(c, SZV, stats)
    ctx = losses.LossContext.create(spec.node_layout, spec.edge_layout, stats)
    params = model.init(jax.random.PRNGKey(0), **helm.batch_inputs(batch))["params"]
    weights = {"hamiltonian": 1.0, "band_energy": 1.0}
    need = losses.needs(weights)
    fns = {name: losses.resolve(name) for name in (*weights, "band_energy_mae")}

    def loss_fn(p):
        out = losses.model_outputs(model, p, batch, need, ctx)
        values = {k: f(out, batch, ctx) for k, f in fns.items()}
        values = {k: v.combine(v.sums) for k, v in values.items()}
        return sum(w * values[k] for k, w in weights.items()), values

    tx = optax.adam(optax.cosine_decay_schedule(3e-3, 400, 0.05))
    opt = tx.init(params)

    @jax.jit
    def step(p, o):
        (_, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, values

    first = None
    for _ in range(400):
        params, opt, values = step(params, opt)
        first = first or float(values["band_energy_mae"])
    final = float(loss_fn(params)[1]["band_energy_mae"])
    print(f"graphene band MAE (valence + 2 conduction, 3x3x1 mesh): {first * 1e3:.1f} -> "
          f"{final * 1e3:.2f} mEh in 400 steps")
    assert np.isfinite(final)
    assert final < 5e-3 and final < first / 20, (first, final)  # Eh


def test_fermi_reference_shifts_blocks_and_bands_by_mu():
    """``H - mu S`` labels (config.data.fermi_reference): every band, the HOMO/LUMO and the
    path bands move by exactly -mu."""
    from helm_jax.data.records import PeriodicLabels
    rng = np.random.default_rng(0)
    pairs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.int32)
    trans = np.zeros((4, 3), np.int32)
    fock = [rng.normal(size=(4, 4)) * 0.1 for _ in range(4)]
    fock[0], fock[3] = fock[0] + fock[0].T, fock[3] + fock[3].T
    fock[2] = fock[1].T
    ovlp = [np.eye(4), 0.1 * rng.normal(size=(4, 4)), None, np.eye(4)]
    ovlp[2] = ovlp[1].T
    mu = 0.137
    labels = PeriodicLabels(
        pairs=pairs, translations=trans, fock_blocks=np.concatenate([f.ravel() for f in fock]),
        overlap_blocks=np.concatenate([s.ravel() for s in ovlp]),
        block_offsets=np.arange(5) * 16, n_ao_per_atom=np.array([4, 4], np.int32),
        weight=np.ones(4), alias_distance=np.full(4, np.inf), kmesh=np.array([1, 1, 1]),
        fermi=mu, homo=mu, lumo=mu + 0.2, gap=0.2, n_electrons=8,
        path_kpts=np.zeros((2, 3)), path_bands=np.array([[0.1, 0.5], [0.2, 0.6]]))
    rec = Record(elements=np.array([5, 7]), coords=HBN_XYZ, cell=HBN_CELL, pbc=HBN_PBC,
                 periodic=labels, key="hbn")
    ref = graphs.fermi_referenced(rec).periodic
    np.testing.assert_allclose(ref.fock_blocks, labels.fock_blocks - mu * labels.overlap_blocks)
    assert (ref.fermi, ref.homo, ref.lumo) == (0.0, 0.0, pytest.approx(0.2))
    np.testing.assert_allclose(ref.path_bands, labels.path_bands - mu)
    raw_bands = graphs.kspace_labels(labels, 2).bands
    np.testing.assert_allclose(graphs.kspace_labels(ref, 2).bands, raw_bands - mu, atol=1e-12)
    spec = graphs.GraphSpec(SZV, CUTOFF, periodic=True, fermi_reference=True)
    g = graphs.build_graph(rec, spec, validate=False)
    g_raw = graphs.build_graph(rec, dataclasses.replace(spec, fermi_reference=False),
                               validate=False)
    assert np.abs(g.node_labels - g_raw.node_labels).max() > 0.05  # mu S on the diagonal
