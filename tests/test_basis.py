"""Basis descriptions and templates built from PySCF."""

import numpy as np
import pytest

from helm_jax import basis


def test_omol_template_is_7s6p5d2f():
    t = basis.make_template(basis.OMOL_CSH_ELEMENTS, "def2-tzvpd", "def2-tzvpd")
    assert len(t.elements) == 58
    assert t.counts == (7, 6, 5, 2)
    assert t.describe() == "7s6p5d2f"
    assert t.n_ao == 64


def test_svp_hcno_template_is_3s2p1d():
    t = basis.make_template(["H", "C", "N", "O"], "def2-svp")
    assert t.describe() == "3s2p1d" and t.n_ao == 14
    assert basis.element_basis("H", "def2-svp").describe() == "2s1p"


@pytest.mark.parametrize("sym,basis_name,ecp", [("O", "def2-svp", None),
                                                ("S", "def2-tzvpd", None),
                                                ("I", "def2-tzvpd", "def2-tzvpd"),
                                                ("Bi", "def2-tzvpd", "def2-tzvpd")])
def test_element_shells_match_pyscf(sym, basis_name, ecp):
    from pyscf import gto
    mol = gto.M(atom=f"{sym} 0 0 0", basis=basis_name, ecp=ecp or {},
                spin=basis.atomic_number(sym) % 2, verbose=0)
    eb = basis.element_basis(sym, basis_name, ecp)
    assert eb.n_ao == mol.nao
    # AO offsets agree with PySCF's ao_loc, shell by shell (nctr = 1 for def2).
    assert list(eb.shell_offsets) == list(mol.ao_loc_nr()[:-1])
    assert list(eb.shell_l) == [mol.bas_angular(i) for i in range(mol.nbas)]
    if ecp:
        assert eb.ecp_electrons == mol.atom_nelec_core(0) > 0


def test_ao_map_places_shells_in_l_major_slots():
    t = basis.make_template(["H", "O"], "def2-svp")  # 3s2p1d
    # H (2s1p): s slots 0,1 -> AOs 0,1; p slot 0 -> AOs 3,4,5.
    np.testing.assert_array_equal(t.ao_map("H"), [0, 1, 3, 4, 5])
    np.testing.assert_array_equal(t.ao_map("O"), np.arange(14))
    np.testing.assert_array_equal(t.slot_mask("H"), [1, 1, 0, 1, 0, 0])
    assert t.ao_mask("H").sum() == 5


def test_template_round_trips_through_dict():
    t = basis.make_template(["H", "I"], "def2-tzvpd", "def2-tzvpd")
    assert basis.Template.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("args,match", [
    (("Og", "def2-svp", "def2-svp"), "does not cover element Og"),
    (("Xe", "6-31g", None), "does not cover element Xe"),
    (("I", "def2-svp", None), "pass ecp="),
    (("Zz", "def2-svp", None), "Unknown element symbol"),
    ((0, "def2-svp", None), "Unknown atomic number"),
])
def test_clear_errors_for_uncovered_elements(args, match):
    with pytest.raises(ValueError, match=match):
        basis.element_basis(*args)


def test_template_rejects_foreign_element():
    t = basis.make_template(["H", "O"], "def2-svp")
    with pytest.raises(ValueError, match="not in this template"):
        t.ao_map("C")
