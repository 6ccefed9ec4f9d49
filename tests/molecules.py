"""Small test geometries (Angstrom) and rotation helpers shared by the tests."""

import numpy as np

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


def random_rotation(seed: int) -> np.ndarray:
    """A uniformly random proper rotation matrix [3, 3]."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rotation_onto(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """A proper rotation R with R @ v/|v| = axis/|axis| (Rodrigues)."""
    a = v / np.linalg.norm(v)
    b = axis / np.linalg.norm(axis)
    c = float(a @ b)
    k = np.cross(a, b)
    s = np.linalg.norm(k)
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        u = np.cross(a, np.eye(3)[np.argmin(np.abs(a))])
        u /= np.linalg.norm(u)
        return 2 * np.outer(u, u) - np.eye(3)  # rotation by pi about u, perpendicular to a
    k = k / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * kx @ kx


def pyscf_mol(symbols, coords, basis, ecp=None, charge=0, spin=0):
    """A built PySCF Mole (Angstrom)."""
    from pyscf import gto
    atom = [(s, tuple(c)) for s, c in zip(symbols, coords)]
    return gto.M(atom=atom, basis=basis, ecp=ecp or {}, charge=charge, spin=spin, verbose=0,
                 unit="Angstrom")
