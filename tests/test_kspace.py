"""k-space: Bloch sums of padded blocks, band energies, their gradients, band losses."""

import dataclasses

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from helm_jax import band_losses, basis, kspace, losses, orbitals
from helm_jax.data import graphs, periodic
from helm_jax.data import statistics as stats_lib

TEMPLATE = basis.make_template("HC", "def2-svp")  # C 3s2p1d (14 AOs), H 2s1p (5 of 14)
A = TEMPLATE.n_ao
NODE_LAYOUT, EDGE_LAYOUT = graphs.layouts_for(TEMPLATE, reduced_nodes=True)


def _symmetric_edges(rng, n_atoms, n_pairs, reach=2):
    """``(senders, receivers, T [E, 3])`` of ``n_pairs`` random image pairs (i, j, T), each
    followed by its reverse (j, i, -T); never (i, i, 0), never twice."""
    seen, out = set(), []
    while len(out) < 2 * n_pairs:
        i, j = rng.integers(n_atoms, size=2)
        t = tuple(int(x) for x in rng.integers(-reach, reach + 1, size=3))
        if (i == j and not any(t)) or (i, j, t) in seen:
            continue
        for key in ((i, j, t), (j, i, tuple(-x for x in t))):
            seen.add(key)
            out.append(key)
    s, r, t = zip(*out)
    return np.array(s), np.array(r), np.array(t, np.int64)


def _random_blocks(rng, n_node, edges_of_pairs=False, n_edge=0):
    """Random node blocks (symmetric) ``[n_node, A, A]`` and edge blocks ``[n_edge, A, A]``;
    with ``edges_of_pairs`` (E even, reverse edges adjacent) edge 2p+1 = edge 2p transposed."""
    node = rng.normal(size=(n_node, A, A))
    node = node + np.swapaxes(node, 1, 2)
    edge = rng.normal(size=(n_edge, A, A)) * 0.3
    if edges_of_pairs:
        edge[1::2] = np.swapaxes(edge[0::2], 1, 2)
    return node, edge


def _reference_hk(z, senders, receivers, trans, node_b, edge_b, kpts, n_pad, hermitian):
    """numpy: PySCF-order pair blocks -> ``periodic.assemble_translations`` ->
    ``periodic.bloch_sum``, padded to ``n_pad`` AOs."""
    maps = [TEMPLATE.ao_map(int(x)) for x in z]
    n_ao = [len(m) for m in maps]
    pi = np.concatenate([np.arange(len(z)), senders])
    pj = np.concatenate([np.arange(len(z)), receivers])
    t = np.concatenate([np.zeros((len(z), 3), np.int64), trans])
    all_b = np.concatenate([node_b, edge_b])
    flat = np.concatenate([b[np.ix_(maps[a], maps[c])].ravel()
                           for a, c, b in zip(pi, pj, all_b)])
    uniq, mats = periodic.assemble_translations(pi, pj, t, flat,
                                                periodic.block_offsets(pi, pj, n_ao), n_ao)
    hk = periodic.bloch_sum(mats, uniq, kpts)
    if hermitian:
        hk = (hk + np.conj(np.swapaxes(hk, 1, 2))) / 2
    out = np.zeros((len(kpts), n_pad, n_pad), complex)
    out[:, :hk.shape[1], :hk.shape[1]] = hk
    return out


@pytest.mark.parametrize("symmetric", [False, True])
def test_hamiltonian_k_equals_numpy_bloch_sum(symmetric):
    """One graph (C, H, H) at node offset 2 / edge offset 3 of a padded batch."""
    rng = np.random.default_rng(1 + symmetric)
    z = np.array([6, 1, 1])
    s, r, t = _symmetric_edges(rng, len(z), 5)
    n_node, n_edge, node_off, edge_off = 7, 16, 2, 3
    node_all, edge_all = _random_blocks(rng, n_node, n_edge=n_edge)
    node_g, edge_g = _random_blocks(rng, len(z), symmetric, len(s))
    node_all[node_off:node_off + len(z)] = node_g
    edge_all[edge_off:edge_off + len(s)] = edge_g
    trans = rng.integers(-3, 4, size=(n_edge, 3)).astype(float)  # other graphs' edges
    trans[edge_off:edge_off + len(s)] = t
    n_graph_ao = sum(len(TEMPLATE.ao_map(int(x))) for x in z)
    n_pad = n_graph_ao + 3
    src, dest, edge = kspace.bloch_entries(z, s, r, TEMPLATE, node_offset=node_off,
                                           edge_offset=edge_off, n_node_batch=n_node,
                                           n_ao=n_pad)
    n_of = {int(x): len(TEMPLATE.ao_map(int(x))) for x in z}
    assert len(src) == sum(n_of[z[a]] * n_of[z[b]] for a, b in  # on-site + edge blocks
                           zip(np.r_[np.arange(len(z)), s], np.r_[np.arange(len(z)), r]))
    pad = 11  # the batch builder pads the entries with -1
    src, dest, edge = (np.r_[x, np.full(pad, -1, np.int32)] for x in (src, dest, edge))
    kpts = rng.uniform(-0.5, 0.5, size=(4, 3))
    kpts[0] = 0.0
    with jax.enable_x64(True):
        flat = jnp.asarray(np.concatenate([node_all.ravel(), edge_all.ravel()]))
        hk = np.asarray(jax.jit(kspace.hamiltonian_k, static_argnums=6)(
            flat, src, dest, edge, trans, kpts, n_pad))
    assert hk.dtype == np.complex128 and hk.shape == (4, n_pad, n_pad)
    ref = _reference_hk(z, s, r, t, node_g, edge_g, kpts, n_pad, hermitian=True)
    np.testing.assert_allclose(hk, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), rtol=0, atol=0)
    assert np.abs(hk[0].imag).max() < 1e-12  # Gamma: real
    raw = _reference_hk(z, s, r, t, node_g, edge_g, kpts, n_pad, hermitian=False)
    if symmetric:  # exact pairs (j, i, -T) = (i, j, T)^T: the Hermitian part changes nothing
        np.testing.assert_allclose(hk, raw, rtol=0, atol=1e-12)
    else:  # independent directed edges: it symmetrises them
        assert np.abs(hk - raw).max() > 0.1


def _random_hermitian(rng, k, n):
    a = rng.normal(size=(k, n, n)) + 1j * rng.normal(size=(k, n, n))
    return (a + np.conj(np.swapaxes(a, 1, 2))) / 2


def _random_overlap(rng, k, n, smallest=None):
    """Hermitian positive-definite ``[k, n, n]``; ``smallest`` sets its lowest eigenvalue."""
    u = np.linalg.qr(rng.normal(size=(k, n, n)) + 1j * rng.normal(size=(k, n, n)))[0]
    lam = rng.uniform(0.3, 2.0, size=(k, n))
    if smallest is not None:
        lam[:, 0] = smallest
    return np.einsum("kij,kj,klj->kil", u, lam, np.conj(u))


def _pad(a, n):
    out = np.zeros(a.shape[:-2] + (n, n), a.dtype)
    out[..., :a.shape[-1], :a.shape[-1]] = a
    return out


@pytest.mark.parametrize("case", ["regular", "near_singular", "padded"])
def test_band_energies_equal_numpy_bands(case):
    rng = np.random.default_rng(3)
    k, n = 3, 6
    h = _random_hermitian(rng, k, n)
    s = _random_overlap(rng, k, n, smallest=1e-9 if case == "near_singular" else None)
    ref = periodic.bands(h, s, s_threshold=orbitals.S_THRESHOLD)
    n_pad = n + 2 if case == "padded" else n
    mask = np.arange(n_pad) < n
    hp, sp = _pad(h, n_pad), _pad(s, n_pad)
    if case == "padded":  # garbage in padded slots must not matter
        hp[:, n:, :] = sp[:, :, n:] = 7.0
    n_real = n - 1 if case == "near_singular" else n
    with jax.enable_x64(True):
        e, n_bands = jax.jit(kspace.band_energies)(hp, sp, mask)
        e = np.asarray(e)
    assert np.all(np.asarray(n_bands) == n_real)
    np.testing.assert_allclose(e[:, :n_real], ref[:, :n_real], rtol=0, atol=1e-10)
    assert np.all(np.isnan(ref[:, n_real:]))
    assert np.all(e[:, n_real:] > e[:, :n_real].max(axis=1, keepdims=True))  # sorted last
    e32, _ = jax.jit(kspace.band_energies)(hp.astype(np.complex64), sp.astype(np.complex64),
                                           mask)
    assert e32.dtype == np.float32
    np.testing.assert_allclose(np.asarray(e32)[:, :n_real], ref[:, :n_real], atol=2e-4)


def test_band_gap_is_indirect_over_real_k():
    e = jnp.array([[-1.0, 0.0, 2.0], [-1.0, 0.5, 1.5], [-1.0, 9.0, -9.0]])
    k_mask = jnp.array([True, True, False])  # the third k-point is padding
    assert float(kspace.band_gap(e, 2, k_mask)) == pytest.approx(1.5 - 0.5)
    assert float(kspace.band_gap(e, 1, k_mask)) == pytest.approx(0.0 - (-1.0))


def _chain_loss(flat, src, dest, edge, trans, kpts, sk, mask, target, n_loss):
    """A band-energy loss through the whole chain: flat -> H(k) -> bands."""
    hk = kspace.hamiltonian_k(flat, src, dest, edge, trans, kpts, mask.shape[0])
    e, _ = kspace.band_energies(hk, sk, mask)
    return jnp.sum((e[:, :n_loss] - target[:, :n_loss]) ** 2)


def test_band_gradients_finite_at_degeneracy_and_match_finite_differences():
    rng = np.random.default_rng(4)
    z = np.array([6, 1])
    s, r, t = _symmetric_edges(rng, len(z), 3)
    t = t.astype(float)
    n = sum(len(TEMPLATE.ao_map(int(x))) for x in z)
    n_pad = n + 2
    src, dest, edge = kspace.bloch_entries(z, s, r, TEMPLATE, n_ao=n_pad)
    mask = np.arange(n_pad) < n
    kpts = np.array([[0.0, 0.0, 0.0], [1 / 3, 1 / 3, 0.0], [0.1, 0.4, 0.2]])
    loss = jax.jit(jax.value_and_grad(_chain_loss), static_argnums=9)
    n_blocks = len(z) + len(s)
    with jax.enable_x64(True):
        # Exactly degenerate: node blocks the identity, edges zero -> H(k) = S(k) = 1.
        eye = np.zeros((n_blocks, A, A))
        eye[:len(z)] = np.eye(A)
        sk = np.broadcast_to(np.eye(n_pad, dtype=complex), (3, n_pad, n_pad))
        target = np.zeros((3, n_pad))
        value, grad = loss(jnp.asarray(eye.ravel()), src, dest, edge, t, kpts, sk, mask,
                           target, 4)  # splits the n-fold degenerate level
        assert float(value) == pytest.approx(3 * 4 * 1.0)
        assert np.all(np.isfinite(np.asarray(grad)))
        # Non-degenerate: random blocks, random S(k); directional derivatives against
        # central differences.
        node_b, edge_b = _random_blocks(rng, len(z), True, len(s))
        flat = np.concatenate([node_b.ravel(), edge_b.ravel()])
        sk = _pad(_random_overlap(rng, 3, n), n_pad)
        target = rng.normal(size=(3, n_pad))
        args = (src, dest, edge, t, kpts, sk, mask, target, 6)
        _, grad = loss(jnp.asarray(flat), *args)
        grad = np.asarray(grad)
        step = 1e-5
        for _ in range(3):
            v = rng.normal(size=flat.shape)
            plus = float(loss(jnp.asarray(flat + step * v), *args)[0])
            minus = float(loss(jnp.asarray(flat - step * v), *args)[0])
            np.testing.assert_allclose(grad @ v, (plus - minus) / (2 * step), rtol=1e-6)


def test_degenerate_group_sum_has_the_exact_gradient():
    """The sum of a degenerate group is smooth: its custom-JVP gradient equals finite
    differences at the degeneracy (a triple at Gamma-like H = U diag U^H)."""
    rng = np.random.default_rng(5)
    n = 6
    u = np.linalg.qr(rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))[0]
    h0 = (u * np.array([-1.0, 0.5, 0.5, 0.5, 2.0, 3.0])) @ np.conj(u.T)
    b = _random_hermitian(rng, 1, n)[0]
    sk = np.eye(n, dtype=complex)[None]
    mask = np.ones(n, bool)

    @jax.jit
    def triple(x):
        e, _ = kspace.band_energies((h0 + x * b)[None], sk, mask)
        return jnp.sum(e[0, 1:4])

    with jax.enable_x64(True):
        d = float(jax.jit(jax.grad(triple))(0.0))
        p = np.conj(u[:, 1:4]).T @ b @ u[:, 1:4]
        assert d == pytest.approx(np.trace(p).real, rel=1e-9)
        fd = (float(triple(1e-5)) - float(triple(-1e-5))) / 2e-5
        assert d == pytest.approx(fd, rel=1e-6)


# ----------------------------------------------------------------------------------------
# Band losses on a hand-built padded batch.
# ----------------------------------------------------------------------------------------

K = 3


def _band_batch(rng):
    """Two periodic graphs and a padding graph, orthonormal AOs (S(k) = 1).

    Graph 0: C, H; 2 real k-points and a padding one; 7 bands compared, 3 occupied, gap
    target. Graph 1: H; no band target (garbage). Returns (batch, node blocks, edge blocks,
    exact band energies of graph 0 [K, n0]).
    """
    zs = [np.array([6, 1]), np.array([1])]
    edge_lists = [_symmetric_edges(rng, 2, 3), _symmetric_edges(rng, 1, 1)]
    n_node = 4  # + one padding node
    n_edge = sum(len(e[0]) for e in edge_lists) + 1  # + one padding edge
    n_pad = 21
    species = np.array([6, 1, 1, 0])
    senders, receivers, trans = [], [], []
    node_b, edge_b = _random_blocks(rng, n_node, True, n_edge - 1)
    edge_b = np.concatenate([edge_b, np.zeros((1, A, A))])
    node_b[3] = 0.0
    ks = {"kpts": rng.uniform(-0.5, 0.5, size=(3, K, 3)),
          "k_mask": np.array([[True, True, False], [True, True, True], [False] * 3]),
          "ao_mask": np.zeros((3, n_pad), bool),
          "overlap_re": np.zeros((3, K, n_pad, n_pad)),
          "overlap_im": np.zeros((3, K, n_pad, n_pad)),
          "bands": rng.normal(size=(3, K, n_pad)) + 50.0,  # garbage unless overwritten
          "band_count": np.array([7, 5, 0], np.int32), "n_occ": np.array([3, 1, 0], np.int32),
          "band_mask": np.array([True, False, False]), "gap": np.array([0.0, 9.0, 0.0]),
          "gap_mask": np.array([True, False, False])}
    entries = []
    node_off = edge_off = 0
    for g, (z, (s, r, t)) in enumerate(zip(zs, edge_lists)):
        entries.append(kspace.bloch_entries(z, s, r, TEMPLATE, node_offset=node_off,
                                            edge_offset=edge_off, n_node_batch=n_node,
                                            n_ao=n_pad))
        senders.append(s + node_off)
        receivers.append(r + node_off)
        trans.append(t)
        n = sum(len(TEMPLATE.ao_map(int(x))) for x in z)
        ks["ao_mask"][g, :n] = True
        ks["overlap_re"][g, :, :n, :n] = np.eye(n)
        node_off += len(z)
        edge_off += len(s)
    m = max(len(e[0]) for e in entries) + 5
    for name, col in (("entry_src", 0), ("entry_dest", 1), ("entry_edge", 2)):
        ks[name] = np.full((3, m), -1, np.int32)
        for g, e in enumerate(entries):
            ks[name][g, :len(e[col])] = e[col]
    s0, r0, t0 = edge_lists[0]
    n0 = 19
    hk = _reference_hk(zs[0], s0, r0, t0, node_b[:2], edge_b[:len(s0)], ks["kpts"][0], n0,
                       hermitian=True)
    exact = np.linalg.eigvalsh(hk)  # S = 1
    ks["bands"][0, :, :7] = exact[:, :7]
    real = ks["k_mask"][0]
    ks["gap"][0] = exact[real, 3].min() - exact[real, 2].max()
    batch = jraph.GraphsTuple(
        nodes={"species": species},
        edges={"translation": np.concatenate(trans + [np.zeros((1, 3))]).astype(float)},
        senders=np.concatenate(senders + [[3]]), receivers=np.concatenate(receivers + [[3]]),
        n_node=np.array([2, 1, 1]), n_edge=np.array([len(s0), len(edge_lists[1][0]), 1]),
        globals={"kspace": ks})
    return batch, node_b, edge_b, exact


NAMES = ("band_energy", "band_gap", "band_energy_mae", "band_gap_mae")


def test_band_losses_zero_for_exact_and_delta_for_shift():
    rng = np.random.default_rng(6)
    batch, node_b, edge_b, exact = _band_batch(rng)
    mul0 = NODE_LAYOUT.muls[0]
    mean, std = rng.normal(size=(119, mul0)), rng.uniform(0.5, 2.0, size=(119, mul0))
    ctx = dataclasses.replace(losses.LossContext.create(NODE_LAYOUT, EDGE_LAYOUT, None),
                              node_mean=mean, node_std=std)
    z = batch.nodes["species"]

    def outputs(nodes):
        irreps = NODE_LAYOUT.blocks_to_irreps(nodes)
        return {"node_h": stats_lib.standardize_nodes(irreps, z, mean, std, mul0),
                "edge_h": EDGE_LAYOUT.blocks_to_irreps(edge_b)}

    @jax.jit
    def values(out, b):
        res = {name: losses.resolve(name)(out, b, ctx) for name in NAMES}
        return {k: (p.combine(p.sums), p.sums["n"]) for k, p in res.items()}

    delta = 0.013
    shifted = node_b.copy()
    for i, zi in enumerate(z[:3]):  # delta * 1 on the real AOs of every on-site block
        amap = TEMPLATE.ao_map(int(zi))
        shifted[i, amap, amap] += delta
    with jax.enable_x64(True):
        out = outputs(node_b)
        band_fn = jax.jit(lambda o, b: band_losses.band_outputs(o, b, ctx))
        bands = band_fn(out, batch)
        np.testing.assert_allclose(bands["band_energy"][0, :, :19], exact, atol=1e-10)
        assert np.asarray(bands["n_bands"]).tolist() == [[19] * K, [5] * K, [0] * K]
        exact_vals = values(out, batch)
        shifted_vals = values(outputs(shifted), batch)
        pre_vals = values({**outputs(shifted), "bands": band_fn(outputs(shifted), batch)},
                          batch)  # precomputed once by a training step
        off = 0.02
        ks = {**batch.globals["kspace"]}
        ks["gap"] = ks["gap"] + np.array([off, 0.0, 0.0])
        gap_vals = values(out, batch._replace(globals={"kspace": ks}))
    for name in ("band_energy_mae", "band_gap_mae"):
        assert float(exact_vals[name][0]) < 1e-10, name
    for name in ("band_energy", "band_gap"):  # sqrt(MSE) + MSE: sqrt(1e-30) at zero error
        assert float(exact_vals[name][0]) < 1e-10, name
    assert float(exact_vals["band_energy"][1]) == 2 * 7  # real k x compared bands, graph 0
    assert float(exact_vals["band_gap"][1]) == 1
    assert float(shifted_vals["band_energy"][0]) == pytest.approx(delta + delta ** 2, rel=1e-8)
    assert float(shifted_vals["band_energy_mae"][0]) == pytest.approx(delta, rel=1e-8)
    assert float(shifted_vals["band_gap"][0]) < 1e-10  # a rigid shift keeps the gap
    for name in NAMES:
        assert float(pre_vals[name][0]) == pytest.approx(float(shifted_vals[name][0]),
                                                          rel=1e-10, abs=1e-12)
    assert float(gap_vals["band_gap"][0]) == pytest.approx(off + off ** 2, rel=1e-8)
    assert float(gap_vals["band_gap_mae"][0]) == pytest.approx(off, rel=1e-8)


def test_band_losses_are_registered_with_band_needs():
    for name in NAMES:
        assert losses.resolve(name) is getattr(band_losses, name)
    assert losses.needs({name: 1.0 for name in NAMES}) == {"bands", "hamiltonian"}
