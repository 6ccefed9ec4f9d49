"""Small test geometries (Angstrom) and a PySCF Mole builder shared by the tests."""

import numpy as np

# Rotations live in equivariance_checks; benchmarks/equivariance.py takes them from here.
from equivariance_checks import random_rotation, rotation_onto  # noqa: F401

WATER = (["O", "H", "H"],
         np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]))

# First frame of rMD17 ethanol_train_01.xyz (split 1).
ETHANOL = (["C", "C", "O", "H", "H", "H", "H", "H", "H"],
           np.array([[-0.17406277, -0.48797864, 0.0185579],
                     [-0.98570278, 0.68695664, 0.58412528],
                     [1.06846394, -0.16863939, -0.50269058],
                     [0.16712676, -1.19985031, 0.84958249],
                     [-0.93496191, -0.92263607, -0.68150202],
                     [-1.75179348, 0.29946017, 1.2842646],
                     [-0.2072526, 1.35456114, 1.05486243],
                     [-1.47331516, 1.17441302, -0.27787521],
                     [1.05895494, -0.40161254, -1.43156577]]))

HYDROGEN_IODIDE = (["I", "H"], np.array([[0.0, 0.0, 0.0], [0.3, 0.5, 1.5]]))

METHYL_IODIDE = (["C", "I", "H", "H", "H"],
                 np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.14], [1.03, 0.0, -0.36],
                           [-0.515, 0.892, -0.36], [-0.515, -0.892, -0.36]]))


def pyscf_mol(symbols, coords, basis, ecp=None, charge=0, spin=0):
    """A built PySCF Mole (Angstrom)."""
    from pyscf import gto
    atom = [(s, tuple(c)) for s, c in zip(symbols, coords)]
    return gto.M(atom=atom, basis=basis, ecp=ecp or {}, charge=charge, spin=spin, verbose=0,
                 unit="Angstrom")
