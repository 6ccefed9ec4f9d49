"""Open-shell (spin-resolved) evaluation metrics against PySCF UKS as the oracle.

Radical CH3 and the doublet ion H2O+ in def2-SVP (PBE, the labeller's settings): the exact
alpha/beta Fock matrices as the prediction give zero errors, psi 100 %, PySCF's <S^2> and an
SCF in one or two cycles; a perturbation of the beta Fock matrix only shows up in the beta
metrics. Closed-shell rows keep their columns and values.
"""

import csv
import json

import numpy as np
import pytest
import scipy.linalg

from helm_jax import evaluate, hamiltonian_metrics, pyscf_metrics
from helm_jax.data import labelling
from helm_jax.data.records import Record

LEVEL = labelling.LevelOfTheory(method="pbe", basis="def2-svp", grid_level=1, conv_tol=1e-11)
MEV = pyscf_metrics.MEV
# Planar CH3 radical, the H2O+ cation at the neutral water geometry, water (Angstrom).
GEOMETRIES = {
    "CH3": (["C", "H", "H", "H"], [[0.0, 0.0, 0.0], [1.079, 0.0, 0.0],
                                   [-0.5395, 0.9344, 0.0], [-0.5395, -0.9344, 0.0]], 0, 1),
    "H2O+": (["O", "H", "H"], [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692],
                               [0.0, -0.7572, -0.4692]], 1, 1),
    "H2O": (["O", "H", "H"], [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692],
                              [0.0, -0.7572, -0.4692]], 0, 0),
}
#: The closed-shell row's columns, in order, before open shells existed.
CLOSED_SHELL_COLUMNS = [
    "key", "formula", "n_atoms", "n_ao", "h_mae_ueh", "h_mae_diag_ueh", "h_mae_offdiag_ueh",
    "eps_occ_mae_meV", "homo_err_meV", "lumo_err_meV", "gap_err_meV", "psi_pct",
    "energy_err_meV", "ref_density_vs_label_meV", "scf_cycles_pred", "scf_cycles_minao",
    "scf_converged", "scf_same_energy", "scf_energy_diff_ueh"]
ERROR_KEYS = ("h_mae_ueh", "h_mae_diag_ueh", "h_mae_offdiag_ueh", "eps_occ_mae_meV",
              "homo_err_meV", "lumo_err_meV", "gap_err_meV")


def _mol(name):
    from pyscf import gto
    symbols, coords, charge, spin = GEOMETRIES[name]
    return gto.M(atom=list(zip(symbols, map(tuple, coords))), basis=LEVEL.basis, unit="Angstrom",
                 charge=charge, spin=spin, verbose=0)


def _labelled(name):
    """PySCF SCF with the labeller's settings, and the record of its Fock matrices."""
    from pyscf import dft
    mol = _mol(name)
    mf = dft.UKS(mol) if mol.spin else dft.RKS(mol)
    mf.xc, mf.grids.level, mf.conv_tol = LEVEL.method, LEVEL.grid_level, LEVEL.conv_tol
    mf.kernel()
    assert mf.converged
    fock = mf.get_fock(dm=mf.make_rdm1())  # [2, N, N] for UKS
    z = np.array([mol.atom_charge(i) for i in range(mol.natm)], np.int32)
    common = dict(elements=z, coords=mol.atom_coords("Angstrom"), overlap=mol.intor("int1e_ovlp"),
                  energy=float(mf.e_tot), charge=mol.charge, spin=mol.spin, key=name)
    if mol.spin:
        record = Record(fock=np.asarray(fock[0]), fock_beta=np.asarray(fock[1]), **common)
    else:
        record = Record(fock=np.asarray(fock), **common)
    return mol, mf, record


@pytest.fixture(scope="module")
def labelled():
    return {name: _labelled(name) for name in GEOMETRIES}


def _noise(n, size, seed):
    """Symmetric matrix of normal entries with standard deviation ``size`` off the diagonal."""
    a = np.random.default_rng(seed).normal(size=(n, n)) * size / np.sqrt(2.0)
    return a + a.T


def _occupied(h, s, n):
    e, c = scipy.linalg.eigh(h, s)
    return e, c[:, :n]


def test_spin_counts_and_mole_follow_charge_spin_and_ecp_cores():
    from pyscf import gto
    ch3i = ["C", "I", "H", "H", "H"], [[0, 0, 0], [0, 0, 2.14], [1.03, 0, -0.36],
                                        [-0.515, 0.892, -0.36], [-0.515, -0.892, -0.36]]
    level = labelling.LevelOfTheory(basis="def2-svp", ecp="def2-svp")
    for charge, spin in ((1, 1), (0, 0), (-1, 1), (0, 2)):
        z = np.array([gto.charge(s) for s in ch3i[0]], np.int32)
        rec = Record(elements=z, coords=np.array(ch3i[1], float), charge=charge, spin=spin)
        mol = pyscf_metrics.record_mole(rec, level)
        assert (mol.charge, mol.spin) == (charge, spin)
        # 6 + 25 (53 - 28 ECP core) + 3 electrons, as PySCF counts them.
        assert pyscf_metrics.n_occupied_spin(rec, "def2-svp", "def2-svp") == mol.nelec
        assert sum(mol.nelec) == 34 - charge
        if spin:
            with pytest.raises(ValueError, match="open-shell"):
                pyscf_metrics.n_occupied(rec, "def2-svp", "def2-svp")
        else:
            assert pyscf_metrics.n_occupied(rec, "def2-svp", "def2-svp") == 17
    with pytest.raises(ValueError, match="cannot have spin"):
        pyscf_metrics.n_occupied_spin(Record(elements=np.array([8, 1]), coords=np.eye(2, 3),
                                             spin=0), "def2-svp", None)


def test_spin_square_is_pyscfs(labelled):
    for name in ("CH3", "H2O+"):
        mol, mf, rec = labelled[name]
        expected = mf.spin_square()[0]
        assert 0.75 < expected < 0.77  # a doublet with a little spin contamination
        assert pyscf_metrics.spin_square(mf.make_rdm1(), rec.overlap) == pytest.approx(
            expected, abs=1e-10)
        dm = pyscf_metrics.spin_density(np.stack([rec.fock, rec.fock_beta]), rec.overlap,
                                        mol.nelec)
        assert pyscf_metrics.spin_square(dm, rec.overlap) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("name", ["CH3", "H2O+"])
def test_reference_fock_is_an_oracle(labelled, name):
    mol, mf, rec = labelled[name]
    pred = np.stack([rec.fock, rec.fock_beta])
    row, extras = evaluate.molecule_row(rec, pred, LEVEL)
    assert (row["charge"], row["spin"], row["n_alpha"], row["n_beta"]) == (
        mol.charge, 1, *mol.nelec)
    for spin in ("", "_alpha", "_beta"):
        for key in ERROR_KEYS:
            key = key.replace("_ueh", f"{spin}_ueh").replace("_meV", f"{spin}_meV")
            assert abs(row[key]) < 1e-8, key
        assert row[f"psi{spin}_pct"] == pytest.approx(100.0, abs=1e-8)
    assert abs(row["energy_err_meV"] / MEV) < 1e-8  # same density, one mean-field object
    assert abs(row["ref_density_vs_label_meV"] / MEV) < 1e-8  # UKS energy of the labels
    assert row["s2_pred"] == row["s2_ref"] and row["s2_err"] == 0.0
    assert row["s2_ref"] == pytest.approx(mf.spin_square()[0], abs=1e-8)
    assert row["scf_converged"] and row["scf_same_energy"]
    assert row["scf_cycles_pred"] <= 2 < row["scf_cycles_minao"]
    assert abs(row["scf_energy_diff_ueh"]) < 1.0  # 1e-6 Eh: the minao run's energy
    # The orbital energies are PySCF's UKS ones, occupied and the LUMO of each spin.
    for k, (eps_ref, eps_pred) in enumerate(extras["eps"]):
        n = mol.nelec[k]
        np.testing.assert_allclose(eps_ref, mf.mo_energy[k][:n + 1], atol=1e-6)
        np.testing.assert_array_equal(eps_ref, eps_pred)


def test_unrestricted_mean_field_has_the_labellers_settings(labelled):
    mol, mf, _ = labelled["CH3"]
    uks = pyscf_metrics.make_scf(mol, LEVEL, max_cycle=33, unrestricted=True)
    assert type(uks).__name__ == "UKS"
    assert (uks.xc, uks.grids.level, uks.conv_tol, uks.max_cycle) == ("pbe", 1, 1e-11, 33)
    assert uks.energy_tot(mf.make_rdm1()) == pytest.approx(mf.e_tot, abs=1e-9)
    uhf = pyscf_metrics.make_scf(mol, labelling.LevelOfTheory(method="hf", density_fit=True),
                                 unrestricted=True)
    assert uhf.istype("UHF") and not uhf.istype("UKS") and uhf.with_df is not None


def test_beta_perturbation_shows_only_in_beta_metrics(labelled):
    from pyscf import scf
    mol, mf, rec = labelled["H2O+"]
    n_a, n_b = mol.nelec
    s = rec.overlap
    noise = _noise(len(s), 2e-3, seed=0)
    pred = np.stack([rec.fock, rec.fock_beta + noise])
    row, extras = evaluate.molecule_row(rec, pred, LEVEL, scf=False)
    # H MAE: beta only, all / diagonal / off-diagonal blocks by hand.
    atom = np.concatenate([np.full(b[3] - b[2], i) for i, b in enumerate(mol.aoslice_by_atom())])
    diag = atom[:, None] == atom[None, :]
    assert row["h_mae_beta_ueh"] == pytest.approx(np.abs(noise).mean() * 1e6, rel=1e-10)
    assert row["h_mae_diag_beta_ueh"] == pytest.approx(np.abs(noise[diag]).mean() * 1e6,
                                                       rel=1e-10)
    assert row["h_mae_offdiag_beta_ueh"] == pytest.approx(np.abs(noise[~diag]).mean() * 1e6,
                                                          rel=1e-10)
    assert row["h_mae_ueh"] == pytest.approx(row["h_mae_beta_ueh"] / 2, rel=1e-12)
    # The spin splitting F_alpha - F_beta is off by minus the noise; its reference size.
    assert row["spin_split_mae_ueh"] == pytest.approx(np.abs(noise).mean() * 1e6, rel=1e-10)
    assert row["spin_split_ref_ueh"] == pytest.approx(
        np.abs(rec.fock - rec.fock_beta).mean() * 1e6, rel=1e-12)
    # Alpha: untouched, exactly.
    for key in ("h_mae_alpha_ueh", "h_mae_diag_alpha_ueh", "h_mae_offdiag_alpha_ueh",
                "eps_occ_mae_alpha_meV", "homo_err_alpha_meV", "lumo_err_alpha_meV",
                "gap_err_alpha_meV"):
        assert row[key] == 0.0, key
    assert row["psi_alpha_pct"] == pytest.approx(100.0, abs=1e-10)
    # Beta orbital energies against SciPy's generalised eigensolver.
    e_r, c_r = _occupied(rec.fock_beta, s, n_b)
    e_p, c_p = _occupied(rec.fock_beta + noise, s, n_b)
    beta_mae = np.abs(e_p[:n_b] - e_r[:n_b]).mean()
    assert beta_mae > 1e-5
    assert row["eps_occ_mae_beta_meV"] == pytest.approx(beta_mae * MEV, rel=1e-8)
    assert row["homo_err_beta_meV"] == pytest.approx((e_p[n_b - 1] - e_r[n_b - 1]) * MEV,
                                                     rel=1e-6)
    assert row["lumo_err_beta_meV"] == pytest.approx((e_p[n_b] - e_r[n_b]) * MEV, rel=1e-6)
    assert abs(row["homo_err_beta_meV"]) > 0 and abs(row["lumo_err_beta_meV"]) > 0
    assert row["eps_occ_mae_meV"] == pytest.approx(beta_mae * n_b / (n_a + n_b) * MEV, rel=1e-8)
    psi_beta = row["psi_beta_pct"]  # mean |cosine| of the occupied coefficient vectors
    assert 50.0 < psi_beta < 100.0 - 1e-6
    assert psi_beta == pytest.approx(100 * np.mean(
        np.abs(np.sum(c_p * c_r, 0)) / np.linalg.norm(c_p, axis=0)
        / np.linalg.norm(c_r, axis=0)), rel=1e-8)
    assert row["psi_pct"] == pytest.approx((100.0 * n_a + psi_beta * n_b) / (n_a + n_b),
                                           rel=1e-10)
    # Open-shell HOMO / LUMO over both spins.
    e_a = scipy.linalg.eigh(rec.fock, s, eigvals_only=True)
    homo = max(e_a[n_a - 1], e_p[n_b - 1]) - max(e_a[n_a - 1], e_r[n_b - 1])
    lumo = min(e_a[n_a], e_p[n_b]) - min(e_a[n_a], e_r[n_b])
    assert row["homo_err_meV"] == pytest.approx(homo * MEV, rel=1e-6, abs=1e-6)
    assert row["lumo_err_meV"] == pytest.approx(lumo * MEV, rel=1e-6, abs=1e-6)
    assert row["gap_err_meV"] == pytest.approx((lumo - homo) * MEV, rel=1e-6, abs=1e-6)
    # <S^2> of the predicted determinant: PySCF's formula on SciPy's orbitals.
    _, c_a = _occupied(rec.fock, s, n_a)
    s2 = scf.uhf.spin_square((c_a, c_p), s)[0]
    assert row["s2_pred"] == pytest.approx(s2, abs=1e-10)
    assert abs(row["s2_err"]) > 1e-6
    assert row["energy_err_meV"] > 1.0  # the SCF density minimises the UKS energy
    np.testing.assert_array_equal(extras["eps"][0][0], extras["eps"][0][1])


def test_closed_shell_row_is_unchanged(labelled):
    mol, mf, rec = labelled["H2O"]
    s, nocc = rec.overlap, mol.nelectron // 2
    noise = _noise(len(s), 1e-3, seed=1)
    pred = rec.fock + noise
    row, extras = evaluate.molecule_row(rec, pred, LEVEL)
    assert list(row) == CLOSED_SHELL_COLUMNS
    assert set(extras) == {"pairs", "eps_ref", "eps_pred"}
    e_r, c_r = _occupied(rec.fock, s, nocc)
    e_p, c_p = _occupied(pred, s, nocc)
    assert row["h_mae_ueh"] == pytest.approx(np.abs(noise).mean() * 1e6, rel=1e-10)
    assert row["eps_occ_mae_meV"] == pytest.approx(
        np.abs(e_p[:nocc] - e_r[:nocc]).mean() * MEV, rel=1e-8)
    assert row["homo_err_meV"] == pytest.approx((e_p[nocc - 1] - e_r[nocc - 1]) * MEV, rel=1e-6)
    assert row["lumo_err_meV"] == pytest.approx((e_p[nocc] - e_r[nocc]) * MEV, rel=1e-6)
    rks = labelling.make_scf(mol, LEVEL)
    e_pred = rks.energy_tot(2 * c_p @ c_p.T)
    assert row["energy_err_meV"] == pytest.approx((e_pred - mf.e_tot) * MEV, abs=1e-6)
    assert row["scf_same_energy"] and row["scf_cycles_minao"] > 2
    # The same molecule as spin-resolved labels (alpha = beta) and prediction: the pooled
    # columns are the closed-shell ones, <S^2> = 0, per-spin columns equal.
    rec_u = Record(**{**rec.__dict__, "fock_beta": rec.fock})
    row_u, _ = evaluate.molecule_row(rec_u, np.stack([pred, pred]), LEVEL, scf=False)
    for key in ("h_mae_ueh", "h_mae_diag_ueh", "h_mae_offdiag_ueh", "eps_occ_mae_meV",
                "homo_err_meV", "lumo_err_meV", "gap_err_meV", "psi_pct", "energy_err_meV"):
        assert row_u[key] == pytest.approx(row[key], rel=1e-8, abs=1e-6), key
        if key != "energy_err_meV":
            spin_key = key.rsplit("_", 1)
            assert row_u[f"{spin_key[0]}_alpha_{spin_key[1]}"] == row_u[
                f"{spin_key[0]}_beta_{spin_key[1]}"], key
    assert abs(row_u["s2_pred"]) < 1e-10 and abs(row_u["s2_ref"]) < 1e-10
    assert (row_u["n_alpha"], row_u["n_beta"]) == (nocc, nocc)


class _StubPredictor:
    """Returns ``[2, N, N]`` for open-shell records, ``[N, N]`` for closed-shell ones, as the
    Predictor does."""

    max_molecules = 2

    def __init__(self, preds):
        self.preds = preds

    def predict_hamiltonian(self, records):
        return [self.preds[r.key] for r in records]


def test_mixed_report_summary_and_outputs(labelled, tmp_path):
    (_, _, water), (_, _, ch3), (_, _, cation) = (labelled[k] for k in ("H2O", "CH3", "H2O+"))
    noise_w, noise_c = _noise(len(water.overlap), 1e-3, 2), _noise(len(ch3.overlap), 1e-3, 3)
    preds = {"H2O": water.fock + noise_w, "CH3": np.stack([ch3.fock, ch3.fock_beta + noise_c]),
             "H2O+": np.stack([cation.fock, cation.fock_beta])}
    records = [water, ch3, cation]
    items = evaluate._predictions(_StubPredictor(preds), records, np.arange(3), chunk=2)
    report = evaluate.evaluate_predictions(items, LEVEL, energy=False, scf=False)
    rows = report.rows
    assert [("s2_pred" in r) for r in rows] == [False, True, True]
    assert len(report.eps) == 1 + 2 + 2
    n_w, n_c, n_p = (len(r.overlap) for r in records)
    assert len(report.parity[0]) == sum(min(5000, n * (n + 1) // 2) * k
                                        for n, k in ((n_w, 1), (n_c, 2), (n_p, 2)))
    summary = evaluate.summarize(report)
    assert summary["n_molecules"] == 3 and summary["n_open_shell"] == 2
    assert summary["h_mae_ueh"] == pytest.approx(np.mean([r["h_mae_ueh"] for r in rows]))
    assert summary["h_mae_beta_ueh"] == pytest.approx(np.abs(noise_c).mean() * 1e6 / 2,
                                                      rel=1e-10)
    assert summary["h_mae_alpha_ueh"] == 0.0 and summary["homo_alpha_mae_meV"] == 0.0
    assert summary["psi_alpha_pct"] == pytest.approx(100.0, abs=1e-10)
    assert abs(rows[1]["s2_err"]) > 1e-8 and rows[2]["s2_err"] == 0.0
    assert summary["s2_mae"] == pytest.approx(abs(rows[1]["s2_err"]) / 2, rel=1e-12)
    assert summary["s2_ref"] == pytest.approx((rows[1]["s2_ref"] + rows[2]["s2_ref"]) / 2)
    # Element pairs pool both spins: CH3's carbon block counted twice, beta noise only.
    c_ao = np.arange(14)  # C def2-SVP: 3s2p1d = 14 AOs, first in the AO order
    pairs_c = hamiltonian_metrics.element_pair_errors(preds["CH3"], np.stack(
        [ch3.fock, ch3.fock_beta]), ch3.elements, "def2-svp", None)
    assert pairs_c["C"][1] == 2 * 14 * 14
    assert pairs_c["C"][0] == pytest.approx(np.abs(noise_c[np.ix_(c_ao, c_ao)]).sum(),
                                            rel=1e-12)
    assert summary["element_pairs"]["C"]["n_entries"] == 2 * 14 * 14
    text = evaluate.format_summary(summary)
    assert "open shells (spin-resolved): 2 molecules" in text and "psi beta" in text
    assert "<S^2> MAE" in text
    paths = evaluate.write_outputs(report, summary, str(tmp_path))
    with open(paths[1]) as f:
        table = list(csv.DictReader(f))
    assert table[0]["s2_pred"] == "" and float(table[1]["s2_pred"]) == pytest.approx(
        rows[1]["s2_pred"], rel=1e-12)
    assert list(table[0])[:12] == CLOSED_SHELL_COLUMNS[:12]
    with open(paths[0]) as f:
        assert json.load(f)["n_open_shell"] == 2
    # Closed-shell only: no open-shell keys or table.
    closed = evaluate.summarize(evaluate.evaluate_predictions(
        [(water, preds["H2O"])], LEVEL, energy=False, scf=False))
    assert "n_open_shell" not in closed and not any("beta" in k or "s2" in k for k in closed)
    assert "open shells" not in evaluate.format_summary(closed)
    assert closed["h_mae_ueh"] == pytest.approx(rows[0]["h_mae_ueh"], rel=1e-12)


def test_one_electron_spin_has_nan_beta_metrics():
    """The H atom: no beta electron, so no beta HOMO, occupied MAE or psi; the summary
    leaves them out of its means."""
    h_atom = Record(elements=np.array([1], np.int32), coords=np.zeros((1, 3)), spin=1, key="H")
    mol = pyscf_metrics.record_mole(h_atom, LEVEL)
    s, h1 = mol.intor("int1e_ovlp"), mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    rec = Record(**{**h_atom.__dict__, "fock": h1, "fock_beta": h1, "overlap": s})
    pred = np.stack([h1, h1 + 1e-3 * s])  # beta orbital energies all up by 1e-3 Eh
    row, _ = evaluate.molecule_row(rec, pred, LEVEL, energy=False, scf=False)
    assert (row["n_alpha"], row["n_beta"]) == (1, 0)
    for key in ("homo_err_beta_meV", "gap_err_beta_meV", "eps_occ_mae_beta_meV",
                "psi_beta_pct"):
        assert np.isnan(row[key]), key
    assert row["lumo_err_beta_meV"] == pytest.approx(1e-3 * MEV, rel=1e-8)
    # HOMO: the alpha 1s (unchanged); LUMO: the beta 1s, lower than the alpha 2s.
    assert row["homo_err_meV"] == 0.0 and row["psi_pct"] == pytest.approx(100.0)
    assert row["lumo_err_meV"] == pytest.approx(1e-3 * MEV, rel=1e-8)
    assert row["gap_err_meV"] == pytest.approx(1e-3 * MEV, rel=1e-8)
    assert row["s2_pred"] == pytest.approx(0.75, abs=1e-12)
    summary = evaluate.summarize(evaluate.Report(rows=[row]))
    assert np.isnan(summary["psi_beta_pct"]) and summary["psi_alpha_pct"] == pytest.approx(100)
    assert summary["lumo_beta_mae_meV"] == pytest.approx(1e-3 * MEV, rel=1e-8)
