"""Differentiable quantum-chemistry targets: orbitals.py against PySCF, gradients, padding, losses."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from helm_jax import basis, losses, orbitals
from helm_jax.data import batching, graphs, reference_targets
from helm_jax.data.records import Record
import molecules

TEMPLATE = basis.make_template("HCO", "def2-svp")
SPEC = graphs.GraphSpec(TEMPLATE, cutoff=5.0, qm_targets="reference")
A = 0.629  # methane (Td): triply degenerate HOMO
METHANE = (["C", "H", "H", "H", "H"],
           np.array([[0, 0, 0], [A, A, A], [-A, -A, A], [-A, A, -A], [A, -A, -A]]))


def _scf(symbols, coords):
    from pyscf import scf
    mol = molecules.pyscf_mol(symbols, coords, "def2-svp")
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-12
    mf.kernel()
    return mol, mf


@pytest.fixture(scope="module")
def systems():
    """(mol, mf, record) of a water, a distorted water and methane at RHF/def2-SVP."""
    out = []
    for symbols, coords in (molecules.WATER, (molecules.WATER[0], molecules.WATER[1] * 1.1),
                            METHANE):
        mol, mf = _scf(symbols, coords)
        fock, overlap = mf.get_fock(), mf.get_ovlp()
        rec = Record(elements=mol.atom_charges(), coords=np.asarray(coords, float), fock=fock,
                     overlap=overlap, key=f"m{len(out)}",
                     extras=reference_targets.orbital_properties(mol, fock, overlap))
        out.append((mol, mf, rec))
    return out


def _pad(a, n):
    out = np.zeros(a.shape[:-2] + (n, n))
    out[..., :a.shape[-1], :a.shape[-1]] = a
    return out


def _batch(recs, budget=None):
    gs = [graphs.build_graph(r, SPEC) for r in recs]
    budget = budget or batching.Budget(
        n_node=sum(g.n_node for g in gs) + 1, n_edge=sum(g.n_edge for g in gs),
        n_graph=len(gs) + 1, n_ao=max(g.qm.n_ao for g in gs) + 3)
    return batching.pad_batch(gs, budget, SPEC.node_layout.dim, SPEC.edge_layout.dim,
                              np.float64)


CTX = losses.LossContext.create(SPEC.node_layout, SPEC.edge_layout, None, n_virtual=2)
ALL = losses.QM_LOSSES + losses.QM_METRICS


@jax.jit
def _qm_outputs(out, b):
    return losses.qm_outputs(out, b, CTX, with_polarizability=True)


def _values(out, b, names=ALL):
    full = {**out, "qm": _qm_outputs(out, b)}
    return {name: getattr(losses, name)(full, b, CTX) for name in names}


@jax.jit
def _loss_values(out, b):
    return {name: p.combine(p.sums) for name, p in _values(out, b, losses.QM_LOSSES).items()}


def _exact_out(b):
    return {"node_h": jnp.asarray(b.nodes["h"]), "edge_h": jnp.asarray(b.edges["h"])}


def test_exact_hamiltonian_reproduces_pyscf(systems):
    with jax.enable_x64(True):
        for mol, mf, rec in systems:
            e, c = mf.eig(rec.fock, rec.overlap)
            dm = mf.make_rdm1(c, mf.get_occ(e, c))
            n = mol.nao
            ao_dip = rec.extras["ao_dipole"]
            out = jax.jit(orbitals.properties)(_pad(rec.fock, n + 3), _pad(rec.overlap, n + 3),
                                         _pad(ao_dip, n + 3), np.arange(n + 3) < n,
                                         mol.nelectron // 2, reference_targets.nuclear_dipole(mol))
            assert int(out["n_orbitals"]) == n
            np.testing.assert_allclose(out["mo_energy"][:n], e, rtol=0, atol=1e-8)
            assert np.all(out["mo_energy"][n:] > e.max())  # padding sorts last
            np.testing.assert_allclose(out["density"], _pad(dm, n + 3), rtol=0, atol=1e-8)
            np.testing.assert_allclose(out["dipole"], mf.dip_moment(mol, dm, unit="AU",
                                                                    verbose=0), atol=1e-8)
            np.testing.assert_allclose(out["polarizability"], rec.extras["polarizability"],
                                       atol=1e-8)
        mol, mf, rec = systems[0]  # water: non-degenerate, coefficients equal up to sign
        orb = orbitals.solve(rec.fock, rec.overlap, np.ones(mol.nao, bool), 5)
        e, c = mf.eig(rec.fock, rec.overlap)
        overlap = np.asarray(orb.mo_coeff).T @ rec.overlap @ c
        np.testing.assert_allclose(np.abs(overlap), np.eye(mol.nao), atol=1e-8)


def test_losses_vanish_for_the_exact_hamiltonian(systems):
    with jax.enable_x64(True):
        b = _batch([r for _, _, r in systems])
        vals = _values(_exact_out(b), b)
        for name, p in vals.items():
            assert float(p.combine(p.sums)) < 1e-10, name
        assert float(vals["dipole"].sums["n"]) == 9  # 3 molecules x 3, padding graph masked
        assert float(vals["orbital_energies"].sums["n"]) == 3 * (5 + 2)  # occupied + 2


def test_padded_batch_equals_molecules_one_at_a_time(systems):
    with jax.enable_x64(True):
        recs = [r for _, _, r in systems]
        b = _batch(recs)
        rng = np.random.default_rng(0)
        out = {k: v + 1e-3 * rng.normal(size=v.shape) for k, v in _exact_out(b).items()}
        together = _qm_outputs(out, b)
        one = batching.Budget(n_node=6, n_edge=20, n_graph=2, n_ao=40)  # one shape for all
        node0 = edge0 = 0
        for k, rec in enumerate(recs):
            single = _batch([rec], one)
            nn, ne = len(rec.elements), int(b.n_edge[k])
            sub = {"node_h": np.zeros_like(single.nodes["h"]),
                   "edge_h": np.zeros_like(single.edges["h"])}
            sub["node_h"][:nn] = out["node_h"][node0:node0 + nn]
            sub["edge_h"][:ne] = out["edge_h"][edge0:edge0 + ne]
            alone = _qm_outputs(sub, single)
            n = int(alone["n_orbitals"][0])
            assert n == int(together["n_orbitals"][k]) == rec.fock.shape[0]
            np.testing.assert_allclose(together["mo_energy"][k, :n], alone["mo_energy"][0, :n],
                                       atol=1e-10)
            for name in ("dipole", "polarizability"):
                np.testing.assert_allclose(together[name][k], alone[name][0], atol=1e-9)
            node0, edge0 = node0 + nn, edge0 + ne


def test_loss_gradients_match_finite_differences(systems):
    with jax.enable_x64(True):
        b = _batch([r for _, _, r in systems[:2]])
        rng = np.random.default_rng(1)
        exact = _exact_out(b)
        out = {k: v + 1e-2 * rng.normal(size=v.shape) for k, v in exact.items()}
        direction = {k: rng.normal(size=v.shape) for k, v in exact.items()}

        def along(t):
            return _loss_values({k: out[k] + t * direction[k] for k in out}, b)

        grads = jax.jit(jax.jacfwd(along))(0.0)  # forward over the losses' own derivatives
        grads_rev = jax.jit(lambda t: {name: jax.grad(lambda u: along(u)[name])(t)
                                       for name in losses.QM_LOSSES})(0.0)
        eps = 1e-5
        plus, minus = along(eps), along(-eps)
        for name in losses.QM_LOSSES:
            fd = float((plus[name] - minus[name]) / (2 * eps))
            assert float(grads_rev[name]) == pytest.approx(fd, rel=1e-4), name
            assert float(grads[name]) == pytest.approx(fd, rel=1e-4), name


def test_polarizability_equals_finite_field_difference_of_the_dipole(systems):
    with jax.enable_x64(True):
        mol, _, rec = systems[1]
        rng = np.random.default_rng(2)
        h = rec.fock + 1e-2 * (lambda m: m + m.T)(rng.normal(size=rec.fock.shape))
        r = rec.extras["ao_dipole"]
        mask = np.ones(mol.nao, bool)
        nuc = reference_targets.nuclear_dipole(mol)

        def mu(field):
            hf = h + np.einsum("k,kij->ij", field, r)
            return orbitals.properties(hf, rec.overlap, r, mask, 5, nuc, False)["dipole"]

        alpha = orbitals.properties(h, rec.overlap, r, mask, 5, nuc)["polarizability"]
        step = 1e-4
        fd = np.stack([(mu(step * e) - mu(-step * e)) / (2 * step) for e in np.eye(3)], 1)
        np.testing.assert_allclose(alpha, fd, rtol=1e-6, atol=1e-6)
        assert np.all(np.linalg.eigvalsh(alpha) > 0)


def test_degenerate_orbitals_have_finite_gradients(systems):
    with jax.enable_x64(True):
        b = _batch([systems[2][2]])  # methane
        exact = _exact_out(b)
        e = np.asarray(_qm_outputs(exact, b)["mo_energy"][0])
        assert abs(e[4] - e[2]) < 1e-10  # the HOMO is triply degenerate
        for name in ("mo_energy", "dipole", "polarizability"):  # non-zero losses at the
            b.globals["qm"][name] += 0.1                          # degenerate H itself
        grads = jax.jit(lambda o: {name: jax.grad(lambda x: _loss_values(x, b)[name])(o)
                                   for name in losses.QM_LOSSES})(exact)
        for name, g in grads.items():
            assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g)), name


def test_exactly_degenerate_spectrum_where_plain_eigh_fails():
    with jax.enable_x64(True):
        w = jnp.array([-1.0, -0.5, -0.5, -0.5, 0.3, 0.3, 1.0])
        n = len(w)
        r = jnp.asarray(np.random.default_rng(3).normal(size=(3, n, n)))
        r = r + jnp.swapaxes(r, 1, 2)
        mask = jnp.ones(n, bool)

        @jax.jit
        def ours(h):
            p = orbitals.properties(h, jnp.eye(n), r, mask, 4, jnp.zeros(3))
            return jnp.sum(p["dipole"] ** 2) + jnp.sum(p["polarizability"] ** 2)

        @jax.jit
        def plain(h):
            c = jnp.linalg.eigh(h)[1][:, :4]
            return jnp.sum(jnp.einsum("kij,ji->k", r, 2 * c @ c.T) ** 2)

        assert not np.all(np.isfinite(jax.grad(plain)(jnp.diag(w))))
        assert np.all(np.isfinite(jax.grad(ours)(jnp.diag(w))))


def test_linear_dependence_guard_drops_directions():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        v = rng.normal(size=(6, 5))
        s = v @ v.T  # rank 5: one exactly dependent direction
        h = rng.normal(size=(6, 6))
        h = h + h.T
        orb = orbitals.solve(h, s, np.ones(6, bool), 2)
        assert int(orb.n_orbitals) == 5
        q = np.linalg.qr(v)[0]  # reference: the problem restricted to the span of S
        ref = scipy.linalg.eigh(q.T @ h @ q, q.T @ s @ q, eigvals_only=True)
        np.testing.assert_allclose(orb.mo_energy[:5], ref, atol=1e-8)
        assert orb.mo_energy[5] > orb.mo_energy[4]


def test_numpy_and_jax_orbitals_drop_the_same_near_dependent_directions():
    """A ghost copy of a hydrogen basis 1e-4 A away: five overlap eigenvalues below
    S_THRESHOLD. The JAX solver (training), the NumPy twin (metrics) and the labeller's
    targets keep the same 24 orbitals, with the same energies."""
    from pyscf import gto, scf
    from helm_jax import pyscf_metrics
    symbols, coords = molecules.WATER
    atoms = [[a, tuple(x)] for a, x in zip(symbols, coords)]
    mol = gto.M(atom=atoms + [["ghost-H", tuple(coords[1] + [1e-4, 0, 0])]], basis="def2-svp",
                verbose=0)
    s, h = mol.intor_symmetric("int1e_ovlp"), scf.hf.get_hcore(mol)
    assert np.sum(np.linalg.eigvalsh(s) <= orbitals.S_THRESHOLD) == 5 and mol.nao == 29
    e, c = pyscf_metrics.orbitals(h, s)
    assert e.shape == (24,) and c.shape == (29, 24)
    np.testing.assert_allclose(c.T @ s @ c, np.eye(24), atol=1e-10)
    with jax.enable_x64(True):
        orb = jax.jit(orbitals.solve)(h, s, np.ones(29, bool), mol.nelectron // 2)
    assert int(orb.n_orbitals) == 24
    np.testing.assert_allclose(orb.mo_energy[:24], e, rtol=0, atol=1e-10)
    np.testing.assert_allclose(reference_targets.orbital_properties(mol, h, s)["mo_energy"], e,
                               rtol=0, atol=1e-10)
    water = gto.M(atom=atoms, basis="def2-svp", verbose=0)  # the span without the ghost
    ref = scipy.linalg.eigh(scf.hf.get_hcore(water), water.intor_symmetric("int1e_ovlp"),
                            eigvals_only=True)
    np.testing.assert_allclose(e, ref, rtol=0, atol=1e-6)


def test_numpy_orbitals_agree_with_pyscf_eig(systems):
    from pyscf import scf
    _, _, rec = systems[0]  # water: well conditioned, non-degenerate
    e, c = orbitals.orbitals_numpy(rec.fock, rec.overlap)
    e_ref, c_ref = scf.hf.eig(rec.fock, rec.overlap)
    np.testing.assert_allclose(e, e_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.abs(c.T @ rec.overlap @ c_ref), np.eye(len(e)), atol=1e-8)


def test_labeller_stores_reference_and_large_basis_targets(tmp_path):
    import h5py
    from pyscf import scf
    from helm_jax.data import geometry, labelling, readers
    water = os.path.join(os.path.dirname(__file__), "data", "water_frames.xyz")
    out = str(tmp_path / "w.h5")
    level = labelling.LevelOfTheory(method="HF", basis="sto-3g", conv_tol=1e-11)
    props = labelling.Properties(dipole=True, polarizability_ff=True, targets_basis="6-31g")
    labelling.label_file(water, out, level, limit=1, progress=False, props=props)
    rec = readers.open_dataset(out)[0]
    mol = geometry.build_mole(geometry.read_structures(water)[0], "sto-3g")
    mf = scf.RHF(mol)
    e, c = mf.eig(rec.fock, rec.overlap)
    dm = mf.make_rdm1(c, mf.get_occ(e, c))
    ex = rec.extras
    np.testing.assert_allclose(ex["ao_dipole"], mol.intor("int1e_r"), atol=1e-12)
    np.testing.assert_allclose(ex["dipole"], mf.dip_moment(mol, dm, unit="AU", verbose=0),
                               atol=1e-8)
    np.testing.assert_allclose(ex["mo_energy"], e, atol=1e-8)
    ff, nsc = ex["polarizability_ff"], ex["polarizability"]
    np.testing.assert_allclose(ff, ff.T, atol=1e-4)
    assert np.all(np.linalg.eigvalsh(nsc) > 0) and np.abs(ff - nsc).max() > 1e-2
    assert ex["targets_mo_energy"].shape == (13,) and ex["targets_polarizability"].shape == (3, 3)
    assert abs(ex["targets_dipole"] - ex["dipole"]).max() > 1e-3  # another basis
    spec = graphs.GraphSpec(basis.make_template("HO", "sto-3g"), 5.0, qm_targets="large_basis",
                            qm_polarizability_ff=True)
    g = graphs.build_graph(rec, spec)
    np.testing.assert_array_equal(g.qm.polarizability, ex["targets_polarizability_ff"])
    assert g.qm.n_occ == 5 and len(g.qm.mo_energy) == 13
    with pytest.raises(ValueError, match="different settings"):
        labelling.label_file(water, out, level, limit=2, progress=False)
    with h5py.File(out, "a") as f:  # a file from before the properties existed
        for name in labelling.Properties().attrs():
            del f.attrs[name]
        for name in list(f["0000000"]):
            if name not in ("elements", "coords", "fock", "overlap", "energy"):
                del f["0000000"][name]
        del f["0000000"].attrs["checksums"]  # nor checksums
    labelling.label_file(water, out, level, limit=2, progress=False)
    assert [readers.open_dataset(out)[i].extras for i in range(2)] == [{}, {}]


def test_finite_field_polarizability_with_direct_scf():
    """With too little max_memory for in-core ERIs PySCF runs direct SCF; the finite-field
    copies must work there too (they failed on PySCF's dropped screening cache), and give
    the in-core result."""
    from pyscf import scf
    mol = molecules.pyscf_mol(*molecules.WATER, "def2-svp")
    incore = scf.RHF(mol).run(conv_tol=1e-11)
    direct = scf.RHF(mol)
    direct.max_memory = 1  # MB: forces the direct (integral-screened) path
    direct.run(conv_tol=1e-11)
    a_in = reference_targets.finite_field_polarizability(incore)
    a_direct = reference_targets.finite_field_polarizability(direct)
    assert np.all(np.isfinite(a_direct)) and np.trace(a_in) > 1.0
    np.testing.assert_allclose(a_direct, a_in, atol=1e-5)


def test_canonical_orthogonalizer_drops_directions_below_the_working_precision():
    """An overlap eigenvalue of 1e-6 is kept in float64 (above S_THRESHOLD) but is rounding
    noise in float32 (n * eps * max = 6 * 1.2e-7 * 2), where it is dropped; the kept
    directions stay orthonormal, x^T S x = diag(keep), in both precisions."""
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    lam = np.array([1e-6, 0.4, 0.7, 1.1, 1.5, 2.0])
    s = (u * lam) @ u.T
    for xp, dtype, n_kept in ((np, np.float64, 6), (jnp, np.float32, 5)):
        x, keep = orbitals.canonical_orthogonalizer(xp.asarray(s, dtype), xp=xp)
        assert int(np.sum(keep)) == n_kept
        x = np.asarray(x, np.float64)
        tol = 1e-9 if dtype == np.float64 else 1e-4
        np.testing.assert_allclose(x.T @ s @ x, np.diag(np.asarray(keep, float)), atol=tol)
