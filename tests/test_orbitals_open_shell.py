"""Open-shell (per-spin) quantum-chemistry targets: helm_jax/orbitals.py and the QM losses
against PySCF UHF, gradients, the closed-shell limit, and a spin-resolved model in jit
(docs/qm_targets.md, "Open shells").

References are PySCF UHF alpha and beta Fock matrices ``mf.get_fock(dm=mf.make_rdm1())`` of
the CH3 radical and the H2O+ radical cation (charged: its dipole depends on the origin, which
is PySCF's, (0, 0, 0), for both) in def2-SVP, float64; closed-shell water is RHF. Every
molecule is padded to one AO count so each jitted function compiles once. The model test
uses a tiny 6-31G model (s and p shells, l_max = 2: quick to compile).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helm_jax import basis, losses, orbitals
from helm_jax.configs import base
from helm_jax.data import batching, graphs, reference_targets
from helm_jax.data.records import Record
from helm_jax.model import assemble, helm
import molecules

CH3 = (["C", "H", "H", "H"],
       np.array([[0.0, 0.0, 0.05], [1.079, 0.0, -0.02], [-0.5395, 0.9344, -0.02],
                 [-0.5395, -0.9344, -0.02]]))
WATER_CATION = (molecules.WATER[0], molecules.WATER[1] + np.array([0.3, -0.2, 0.5]))
TEMPLATE = basis.make_template("HCO", "def2-svp")
SPEC = graphs.GraphSpec(TEMPLATE, 5.0, qm_targets="reference", spin_resolved=True,
                        charge_spin_embedding=True)
NPAD = 32  # AOs of every padded molecule (CH3 29, water 24)
CTX = losses.LossContext.create(SPEC.node_layout, SPEC.edge_layout, None, n_virtual=2)
ALL = losses.QM_LOSSES + losses.QM_METRICS


def _z(symbols):
    return np.array([basis.atomic_number(s) for s in symbols], np.int32)


def _label(symbols, coords, basis_name, charge=0, spin=0, key=""):
    """``(mol, mf, record)``: UHF (2S != 0) or RHF, the labeller's targets in the extras."""
    from pyscf import scf
    mol = molecules.pyscf_mol(symbols, coords, basis_name, charge=charge, spin=spin)
    mf = (scf.UHF if spin else scf.RHF)(mol)
    mf.conv_tol = 1e-12
    mf.kernel()
    assert mf.converged
    fock = np.asarray(mf.get_fock(dm=mf.make_rdm1()))
    extras = reference_targets.scf_properties(mf, fock)
    rec = Record(elements=_z(symbols), coords=np.asarray(coords, float),
                 fock=fock[0] if spin else fock, fock_beta=fock[1] if spin else None,
                 overlap=mf.get_ovlp(), charge=charge, spin=spin, key=key, extras=extras)
    return mol, mf, rec


@pytest.fixture(scope="module")
def systems():
    """CH3 (2S = 1), H2O+ (charge 1, 2S = 1) and water, def2-SVP."""
    return {"ch3": _label(*CH3, "def2-svp", spin=1, key="ch3"),
            "cation": _label(*WATER_CATION, "def2-svp", charge=1, spin=1, key="cation"),
            "water": _label(*molecules.WATER, "def2-svp", key="water")}


def _pad(a, n=NPAD):
    out = np.zeros(a.shape[:-2] + (n, n))
    out[..., :a.shape[-1], :a.shape[-1]] = a
    return out


def _focks(rec):
    """``[2, N, N]`` alpha and beta Fock matrices (restricted: the same twice)."""
    return np.stack([rec.fock, rec.fock if rec.fock_beta is None else rec.fock_beta])


def _inputs(mol, rec, fock=None):
    """Padded ``(h [2, n, n], s, ao_dipole, ao_mask, (n_alpha, n_beta), nuclear_dipole)``."""
    n = mol.nao
    return (_pad(_focks(rec) if fock is None else fock), _pad(rec.overlap),
            _pad(rec.extras["ao_dipole"]), np.arange(NPAD) < n, np.array(mol.nelec),
            reference_targets.nuclear_dipole(mol))


_properties_spins = jax.jit(orbitals.properties_spins)
_properties = jax.jit(orbitals.properties)


def _batch(recs, budget=None, spec=SPEC):
    gs = [graphs.build_graph(r, spec) for r in recs]
    budget = budget or batching.Budget(
        n_node=sum(g.n_node for g in gs) + 1, n_edge=sum(g.n_edge for g in gs),
        n_graph=len(gs) + 1, n_ao=NPAD)
    return batching.pad_batch(gs, budget, spec.node_layout.dim, spec.edge_layout.dim,
                              np.float64, spin_resolved=spec.spin_resolved)


def _exact_out(b, spins=True):
    out = {"node_h": jnp.asarray(b.nodes["h"]), "edge_h": jnp.asarray(b.edges["h"])}
    if spins:
        out.update(node_h_beta=jnp.asarray(b.nodes["h_beta"]),
                   edge_h_beta=jnp.asarray(b.edges["h_beta"]))
    return out


@functools.partial(jax.jit, static_argnames="names")
def _loss_values(out, b, names=ALL):
    full = {**out, "qm": losses.qm_outputs(out, b, CTX, with_polarizability=True)}
    parts = {name: getattr(losses, name)(full, b, CTX) for name in names}
    return ({name: p.combine(p.sums) for name, p in parts.items()},
            {name: p.sums["n"] for name, p in parts.items()})


def test_radical_reproduces_pyscf(systems):
    with jax.enable_x64(True):
        for key in ("ch3", "cation"):
            mol, mf, rec = systems[key]
            n, (n_alpha, n_beta) = mol.nao, mol.nelec
            out = _properties_spins(*_inputs(mol, rec))
            assert int(out["n_orbitals"]) == n and out["mo_energy"].shape == (2, NPAD)
            # PySCF's own eigensolver on the same matrices, and its converged SCF orbitals
            # (those of the previous iteration's Fock matrix: equal to the SCF tolerance).
            e, c = mf.eig(_focks(rec), rec.overlap)
            occ = mf.get_occ(e, c)
            np.testing.assert_allclose(occ.sum(1), [n_alpha, n_beta])
            for s in range(2):
                np.testing.assert_allclose(out["mo_energy"][s, :n], e[s], rtol=0, atol=1e-10)
                np.testing.assert_allclose(out["mo_energy"][s, :n], mf.mo_energy[s], rtol=0,
                                           atol=1e-6)
                np.testing.assert_allclose(out["mo_energy"][s, :n], rec.extras["mo_energy"][s],
                                           rtol=0, atol=1e-10)
            dm = mf.make_rdm1(c, occ)  # [2, N, N]
            np.testing.assert_allclose(out["density"], _pad(dm), rtol=0, atol=1e-9)
            # The dipole of the total density about PySCF's origin (0, 0, 0), the labeller's
            # dipole_origin: the cation's depends on it (moving the origin by d changes it by
            # -charge * d), so the nuclear term and the AO integrals must share it.
            mu_ref = mf.dip_moment(mol, dm, unit="au", verbose=0)
            np.testing.assert_allclose(out["dipole"], mu_ref, rtol=0, atol=1e-9)
            np.testing.assert_allclose(out["dipole"], mf.dip_moment(unit="au", verbose=0),
                                       rtol=0, atol=1e-6)
            np.testing.assert_allclose(out["dipole"], rec.extras["dipole"], rtol=0, atol=1e-9)
            assert np.linalg.norm(mu_ref) > 1e-2
            # Non-self-consistent polarisability: the labeller's per-spin sum.
            alpha = np.asarray(out["polarizability"])
            np.testing.assert_allclose(alpha, rec.extras["polarizability"], rtol=0, atol=1e-8)
            assert np.all(np.linalg.eigvalsh((alpha + alpha.T) / 2) > 1.0)
            # Open-shell gap: lowest virtual minus highest occupied over both spins.
            homo = max(e[0][n_alpha - 1], e[1][n_beta - 1])
            lumo = min(e[0][n_alpha], e[1][n_beta])
            gap = orbitals.homo_lumo_gap_spins(out["mo_energy"], np.array(mol.nelec), n)
            assert float(gap) == pytest.approx(lumo - homo, abs=1e-10)
            spin_gaps = (e[0][n_alpha] - e[0][n_alpha - 1], e[1][n_beta] - e[1][n_beta - 1])
            assert lumo - homo <= min(spin_gaps)
            if key == "ch3":  # alpha SOMO to its empty beta partner: neither spin's gap
                assert lumo - homo < min(spin_gaps) - 0.03  # 0.529 against 0.584 Eh


def test_polarizability_is_the_field_derivative_of_the_total_dipole(systems):
    """``d mu / d E`` of the per-spin solve with ``E.r`` added to both spins' H, by central
    differences of the dipole, for a perturbed (not self-consistent) pair of matrices."""
    with jax.enable_x64(True):
        mol, _, rec = systems["ch3"]
        rng = np.random.default_rng(0)
        h, s, r, mask, n_spin, nuc = _inputs(mol, rec)
        noise = rng.normal(size=h.shape) * 1e-2
        h = h + _pad((noise + np.swapaxes(noise, 1, 2))[:, :mol.nao, :mol.nao])
        alpha = _properties_spins(h, s, r, mask, n_spin, nuc)["polarizability"]
        mu = jax.jit(lambda hf: orbitals.properties_spins(hf, s, r, mask, n_spin, nuc,
                                                          False)["dipole"])
        step = 1e-3
        at = lambda field: mu(h + np.einsum("k,kij->ij", field, r))
        fd = np.stack([(8 * (at(step * e) - at(-step * e)) - (at(2 * step * e)
                                                             - at(-2 * step * e)))
                       / (12 * step) for e in np.eye(3)], 1)  # fourth order
        np.testing.assert_allclose(alpha, fd, rtol=1e-6, atol=1e-7)


def test_closed_shell_per_spin_equals_restricted(systems):
    """Water with F_alpha = F_beta: the per-spin path gives the restricted values, for the
    reference and for a perturbed H, in orbitals.py and in every QM loss and its gradient."""
    with jax.enable_x64(True):
        mol, _, rec = systems["water"]
        rng = np.random.default_rng(1)
        noise = rng.normal(size=rec.fock.shape) * 1e-2
        for f in (rec.fock, rec.fock + noise + noise.T):
            h, s, r, mask, n_spin, nuc = _inputs(mol, rec, np.stack([f, f]))
            both = _properties_spins(h, s, r, mask, n_spin, nuc)
            one = _properties(h[0], s, r, mask, mol.nelectron // 2, nuc)
            for k in range(2):
                np.testing.assert_allclose(both["mo_energy"][k], one["mo_energy"], rtol=0,
                                           atol=1e-10)
            np.testing.assert_allclose(both["density"].sum(0), one["density"], rtol=0,
                                       atol=1e-10)
            for name in ("dipole", "polarizability"):
                np.testing.assert_allclose(both[name], one[name], rtol=0, atol=1e-10)
            gap_spins = orbitals.homo_lumo_gap_spins(both["mo_energy"], n_spin, mol.nao)
            gap = orbitals.homo_lumo_gap(one["mo_energy"], mol.nelectron // 2)
            assert float(gap_spins) == pytest.approx(float(gap), abs=1e-12)
        assert np.abs(one["polarizability"] - rec.extras["polarizability"]).max() > 1e-3

        b = _batch([rec])
        exact = _exact_out(b, spins=False)
        out = {k: v + 1e-2 * rng.normal(size=v.shape) for k, v in exact.items()}
        spins = {**out, "node_h_beta": out["node_h"], "edge_h_beta": out["edge_h"]}
        v_one, n_one = _loss_values(out, b)
        v_both, n_both = _loss_values(spins, b)
        for name in ALL:
            assert float(v_one[name]) > 1e-8, name
            assert float(v_both[name]) == pytest.approx(float(v_one[name]), rel=1e-10), name
        assert float(n_both["orbital_energies"]) == 2 * float(n_one["orbital_energies"]) == 14
        assert float(n_both["dipole"]) == float(n_one["dipole"]) == 3
        # Gradients: d/dH of the restricted loss = the sum of the alpha and beta gradients.
        names = losses.QM_LOSSES
        g_one = jax.jit(lambda o: {n: jax.grad(lambda x: _loss_values(x, b, names)[0][n])(o)
                                   for n in names})(out)
        g_both = jax.jit(lambda o: {n: jax.grad(lambda x: _loss_values(x, b, names)[0][n])(o)
                                    for n in names})(spins)
        for name in names:
            for key in ("node_h", "edge_h"):
                summed = g_both[name][key] + g_both[name][key + "_beta"]
                scale = np.abs(g_one[name][key]).max()
                assert scale > 0, name
                np.testing.assert_allclose(summed, g_one[name][key], rtol=0,
                                           atol=1e-9 * scale, err_msg=name)


def test_qm_labels_and_padding_per_spin(systems):
    ch3, water = systems["ch3"][2], systems["water"][2]
    g_ch3, g_w = graphs.build_graph(ch3, SPEC), graphs.build_graph(water, SPEC)
    assert (g_ch3.qm.n_alpha, g_ch3.qm.n_beta) == (5, 4) and g_ch3.qm.open_shell
    assert (g_w.qm.n_alpha, g_w.qm.n_beta, g_w.qm.n_occ) == (5, 5, 5)
    with pytest.raises(ValueError, match="n_alpha and n_beta"):
        g_ch3.qm.n_occ
    np.testing.assert_array_equal(g_ch3.qm.mo_energy, ch3.extras["mo_energy"][0])
    np.testing.assert_array_equal(g_ch3.qm.mo_energy_beta, ch3.extras["mo_energy"][1])
    np.testing.assert_array_equal(g_w.qm.mo_energy_beta, water.extras["mo_energy"])
    b = _batch([ch3, water], batching.Budget(n_node=9, n_edge=20, n_graph=4, n_ao=NPAD))
    q = b.globals["qm"]
    assert "n_occ" not in q
    np.testing.assert_array_equal(q["n_alpha"], [5, 5, 0, 0])
    np.testing.assert_array_equal(q["n_beta"], [4, 5, 0, 0])
    np.testing.assert_array_equal(q["mo_energy_count"], [29, 24, 0, 0])
    np.testing.assert_array_equal(q["mo_energy"][0, :29], ch3.extras["mo_energy"][0])
    np.testing.assert_array_equal(q["mo_energy_beta"][0, :29], ch3.extras["mo_energy"][1])
    np.testing.assert_array_equal(q["mo_energy_beta"][1], q["mo_energy"][1])
    assert np.all(q["mo_energy_beta"][2:] == 0) and np.all(q["mo_energy_beta"][0, 29:] == 0)
    # What cannot be trained is refused, naming the fix.
    restricted_rows = dataclasses.replace(ch3, fock_beta=None, extras={
        **ch3.extras, "mo_energy": ch3.extras["mo_energy"][0]})
    with pytest.raises(ValueError, match=r"\[2, K\].*label.py --dipole"):
        graphs.build_graph(restricted_rows, SPEC)
    label_free = dataclasses.replace(ch3, fock=None, fock_beta=None)
    with pytest.raises(ValueError, match="--config.heads.spin=sum_diff"):
        graphs.build_graph(label_free, graphs.GraphSpec(TEMPLATE, 5.0, qm_targets="reference"))
    with pytest.raises(ValueError, match="cannot have 2S=2"):
        graphs.build_graph(dataclasses.replace(label_free, spin=2), SPEC)


def test_losses_vanish_for_the_reference_radical(systems):
    with jax.enable_x64(True):
        b = _batch([systems[k][2] for k in ("ch3", "water", "cation")])
        values, counts = _loss_values(_exact_out(b), b)
        for name in ALL:
            assert float(values[name]) < 1e-10, name
        # Occupied + 2 virtual per spin: CH3 (5 + 2) + (4 + 2), water 2 x (5 + 2),
        # H2O+ (5 + 2) + (4 + 2); the padding graph is masked.
        assert float(counts["orbital_energies"]) == 13 + 14 + 13
        assert float(counts["gap"]) == 3 and float(counts["dipole"]) == 9
        assert float(counts["polarizability"]) == 27
        # Swapping the spins' predictions is seen by the orbital energies and the gap.
        swapped = {"node_h": b.nodes["h_beta"], "edge_h": b.edges["h_beta"],
                   "node_h_beta": b.nodes["h"], "edge_h_beta": b.edges["h"]}
        values = _loss_values(jax.tree.map(jnp.asarray, swapped), b)[0]
        assert float(values["orbital_energy_mae"]) > 1e-3
        assert float(values["gap_mae"]) > 1e-3


def _direction(recs, rng, b):
    """Irreps of random symmetric alpha and beta matrices of unit norm per molecule, laid
    out like the batch ``b`` (the labels of records whose Fock matrices they are)."""
    plain = graphs.GraphSpec(TEMPLATE, 5.0, spin_resolved=True)
    mats = []
    for r in recs:
        n = r.fock.shape[0]
        d = rng.normal(size=(2, n, n))
        d = d + np.swapaxes(d, 1, 2)
        mats.append(Record(elements=r.elements, coords=r.coords, charge=r.charge,
                           spin=r.spin, fock=d[0] / np.linalg.norm(d[0]),
                           fock_beta=d[1] / np.linalg.norm(d[1])))
    gs = [graphs.build_graph(m, plain) for m in mats]
    budget = batching.Budget(b.nodes["species"].shape[0], b.senders.shape[0],
                             b.n_node.shape[0])
    d = batching.pad_batch(gs, budget, plain.node_layout.dim, plain.edge_layout.dim,
                           np.float64, spin_resolved=True)
    return {"node_h": d.nodes["h"], "edge_h": d.edges["h"],
            "node_h_beta": d.nodes["h_beta"], "edge_h_beta": d.edges["h_beta"]}


def test_per_spin_loss_gradients_match_finite_differences(systems):
    with jax.enable_x64(True):
        recs = [systems["ch3"][2], systems["water"][2]]
        b = _batch(recs)
        rng = np.random.default_rng(2)
        exact = _exact_out(b)
        out = {k: v + 1e-2 * rng.normal(size=v.shape) for k, v in exact.items()}
        direction = _direction(recs, rng, b)
        names = losses.QM_LOSSES

        def along(t):
            return _loss_values({k: out[k] + t * direction[k] for k in out}, b, names)[0]

        forward = jax.jit(jax.jacfwd(along))(0.0)
        reverse = jax.jit(lambda t: {n: jax.grad(lambda u: along(u)[n])(t) for n in names})(0.0)
        eps = 1e-4
        plus, minus = along(eps), along(-eps)
        plus2, minus2 = along(2 * eps), along(-2 * eps)
        for name in names:
            # Fourth-order central differences: truncation ~eps^4, far below 1e-6.
            fd = float((8 * (plus[name] - minus[name]) - (plus2[name] - minus2[name]))
                       / (12 * eps))
            assert np.isfinite(float(reverse[name])) and abs(fd) > 1e-8, name
            assert float(reverse[name]) == pytest.approx(fd, rel=1e-6), name
            assert float(forward[name]) == pytest.approx(fd, rel=1e-6), name


# -- a spin-resolved model -----------------------------------------------------------------

T631 = basis.make_template("HCO", "6-31g")
SPEC_631 = graphs.GraphSpec(T631, 5.0, qm_targets="reference", spin_resolved=True,
                            charge_spin_embedding=True)


def _tiny_model(mode):
    c = base.get_config()
    c.model.update(channels=8, num_layers=1, l_max=2, m_max=2, num_rbf=8,
                   edge_channels_hidden=8, ffn_channels=8, cutoff=5.0, dtype="float64",
                   param_dtype="float64", charge_spin_embedding=True)
    c.heads.update(hidden=16, energy_hidden=16, spin=mode)
    return helm.build_model(c, T631)


def _random_params(model, batch, seed=0):
    """Random parameters with the tree ``model.init`` makes (its shapes by ``eval_shape``,
    which traces without compiling the initialisation): normal kernels and embeddings of
    scale ``1 / sqrt(fan_in)``, zero biases, unit norm scales."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               **helm.batch_inputs(batch)))["params"]
    flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    leaves = []
    for path, leaf in flat:
        name = jax.tree_util.keystr(path[-1:])
        if "scale" in name:
            leaves.append(np.ones(leaf.shape, leaf.dtype))
        elif "bias" in name:
            leaves.append(np.zeros(leaf.shape, leaf.dtype))
        else:
            fan_in = leaf.shape[-2] if len(leaf.shape) > 1 else 1
            leaves.append((rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(tree, leaves)


def test_spin_resolved_model_qm_losses_in_jit():
    """A radical and a closed-shell molecule in one padded batch (a padding graph and
    padded AOs), through model_outputs and every QM loss inside one jit: finite values, the
    closed shell's spins identical, and each molecule's values those of
    orbitals.properties_spins on its own unpadded predicted H."""
    ch3 = _label(*CH3, "6-31g", spin=1, key="ch3")[2]
    water = _label(*molecules.WATER, "6-31g", key="water")[2]
    gs = [graphs.build_graph(r, SPEC_631) for r in (ch3, water)]
    budget = batching.Budget(n_node=10, n_edge=22, n_graph=4, n_ao=20)  # 2 padding graphs
    with jax.enable_x64(True):
        b = batching.pad_batch(gs, budget, SPEC_631.node_layout.dim,
                               SPEC_631.edge_layout.dim, np.float64, spin_resolved=True)
        model = _tiny_model("sum_diff")
        params = _random_params(model, b)
        ctx = losses.LossContext.create(SPEC_631.node_layout, SPEC_631.edge_layout, None,
                                        n_virtual=1)
        weights = {name: 1.0 for name in losses.QM_LOSSES}
        need = losses.needs(weights)

        @jax.jit
        def evaluate(p, batch):
            out = losses.model_outputs(model, p, batch, need, ctx)
            parts = {n: getattr(losses, n)(out, batch, ctx) for n in ALL}
            return {n: v.combine(v.sums) for n, v in parts.items()}, out

        values, out = jax.device_get(evaluate(params, b))
        for name in ALL:
            assert np.isfinite(float(values[name])) and float(values[name]) > 0, name
        qm = out["qm"]
        assert qm["mo_energy"].shape == (4, 2, 20)
        np.testing.assert_array_equal(qm["mo_energy"][1, 0], qm["mo_energy"][1, 1])  # water
        assert np.abs(qm["mo_energy"][0, 0] - qm["mo_energy"][0, 1]).max() > 1e-4  # CH3
        assert np.all(np.isfinite(qm["mo_energy"])) and np.all(np.isfinite(qm["dipole"]))
        # Each molecule alone: the model's full alpha and beta H, assembled on the host
        # (assemble.batch_to_full) and padded to another AO count.
        layouts = (SPEC_631.node_layout, SPEC_631.edge_layout, None)
        for k in range(2):
            h = np.stack([assemble.batch_to_full(out, b, *layouts, spin=s)[k]
                          for s in ("alpha", "beta")])
            q = gs[k].qm
            alone = _properties_spins(_pad(h), _pad(q.overlap), _pad(q.ao_dipole),
                                      np.arange(NPAD) < q.n_ao, np.array([q.n_alpha, q.n_beta]),
                                      q.nuclear_dipole)
            np.testing.assert_allclose(qm["mo_energy"][k, :, :q.n_ao],
                                       alone["mo_energy"][:, :q.n_ao], rtol=0, atol=1e-9)
            for name in ("dipole", "polarizability"):  # random H: small gaps, large alpha
                np.testing.assert_allclose(qm[name][k], alone[name], rtol=0,
                                           atol=1e-9 * np.abs(alone[name]).max())
