"""Large liquid-water clusters for scaling checks (graph building, sparse Hamiltonians).

    from helm_jax.data.water_box import water_box
    record = water_box(3333)        # 9,999 atoms, ~1 g/cm^3, random orientations
    atoms = ase.Atoms(numbers=record.elements, positions=record.coords)

The molecules' oxygens sit on a simple cubic lattice whose spacing gives the requested mass
density (3.10 A at 1 g/cm^3), filled site by site (x fastest) up to ``n_molecules``, each
molecule rigid (O-H 0.9572 A, H-O-H 104.52 deg, the TIP3P/experimental gas-phase geometry)
and rotated by an independent uniformly random rotation. It is a cluster (no periodic
boundaries): a cube of liquid-like density, not an equilibrated liquid. The closest
intermolecular contacts are then at least ``spacing - 2 * 0.9572`` (1.19 A at 1 g/cm^3), far
above :data:`helm_jax.data.geometry.MIN_DISTANCE`, so every box is a valid geometry.
"""

from __future__ import annotations

import math

import numpy as np

from helm_jax.data.records import Record

#: Molar mass of H2O (g/mol) and Avogadro's number, for the lattice spacing.
WATER_MOLAR_MASS = 18.015
AVOGADRO = 6.02214076e23
#: Rigid water geometry: O-H bond (A) and H-O-H angle (degrees).
OH_BOND = 0.9572
HOH_ANGLE = 104.52


def lattice_spacing(density: float = 1.0) -> float:
    """Oxygen-oxygen spacing (A) of a simple cubic water lattice of ``density`` g/cm^3."""
    if not density > 0:
        raise ValueError(f"density={density!r}: give a positive mass density in g/cm^3 "
                         "(liquid water is 1.0).")
    volume_a3 = WATER_MOLAR_MASS / (AVOGADRO * density) * 1e24  # A^3 per molecule
    return volume_a3 ** (1.0 / 3.0)


def water_box(n_molecules: int, density: float = 1.0, seed: int = 0) -> Record:
    """A cube of ``n_molecules`` randomly oriented rigid waters at ``density`` g/cm^3.

    Args:
      n_molecules: number of H2O molecules (3 atoms each).
      density: mass density in g/cm^3 (sets the lattice spacing, :func:`lattice_spacing`).
      seed: seed of the random orientations (same seed, same box).

    Returns:
      A label-free :class:`Record` (elements O, H, H per molecule; Angstrom coordinates;
      charge 0, spin 0) with key ``"water_box_<n_molecules>"``.

    Raises:
      ValueError: ``n_molecules < 1`` or a non-positive density.
    """
    from scipy.spatial.transform import Rotation  # pylint: disable=import-outside-toplevel

    n = int(n_molecules)
    if n < 1:
        raise ValueError(f"n_molecules={n_molecules!r}: a water box needs at least one "
                         "molecule.")
    spacing = lattice_spacing(density)
    side = max(1, round(n ** (1.0 / 3.0)))
    while side ** 3 < n:  # the smallest cube of sites that holds n molecules
        side += 1
    site = np.arange(n)
    grid = np.stack([site % side, (site // side) % side, site // side ** 2], axis=1)
    oxygens = grid.astype(np.float64) * spacing  # [n, 3]
    half = math.radians(HOH_ANGLE) / 2
    local = OH_BOND * np.array([[math.sin(half), math.cos(half), 0.0],
                                [-math.sin(half), math.cos(half), 0.0]])  # H positions - O
    rot = Rotation.random(n, random_state=np.random.default_rng(seed)).as_matrix()  # [n,3,3]
    hydrogens = oxygens[:, None, :] + np.einsum("nij,hj->nhi", rot, local)  # [n, 2, 3]
    coords = np.concatenate([oxygens[:, None, :], hydrogens], axis=1).reshape(-1, 3)
    elements = np.tile(np.array([8, 1, 1], np.int32), n)
    return Record(elements=elements, coords=coords, key=f"water_box_{n}")
