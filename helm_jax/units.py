"""Units and physical constants: the one place every module takes them from.

``BOHR_ANGSTROM`` is PySCF's (``pyscf.data.nist.BOHR``), so coordinates converted here agree
bit for bit with PySCF's own conversion; ``HARTREE_EV`` is CODATA 2018 (tests/test_units.py).
"""

BOHR_ANGSTROM = 0.52917721092  # bohr radius in Angstrom (pyscf.data.nist.BOHR)
HARTREE_EV = 27.211386245988  # Hartree in eV (CODATA 2018)
HARTREE_MEV = HARTREE_EV * 1e3
