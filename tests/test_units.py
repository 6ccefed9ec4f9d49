"""One home for units: helm_jax.units agrees with PySCF and every module uses it."""

import pathlib
import re

from pyscf.data import nist

from helm_jax import units

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bohr_is_pyscfs():
    assert units.BOHR_ANGSTROM == nist.BOHR  # bit for bit: the labeller converts as PySCF
    assert abs(units.HARTREE_EV - nist.HARTREE2EV) < 1e-6  # CODATA 2018 vs PySCF's 2014


def test_no_module_defines_its_own_constants():
    pattern = re.compile(r"^\s*(BOHR\w*|HARTREE\w*)\s*=\s*[0-9]", re.M)
    offenders = [str(p.relative_to(REPO)) for folder in ("helm_jax", "experiments", "data_prep",
                                                         "benchmarks")
                 for p in (REPO / folder).rglob("*.py")
                 if p.name != "units.py" and pattern.search(p.read_text())]
    assert offenders == []
