"""The molecules of helm_jax's embedded default dataset: reference-geometry builders and table.

:data:`MOLECULES` lists every molecule (name, reference-geometry builder, number of
conformers, provenance of the geometry); ``data_prep/make_embedded_geometries.py`` turns it
into the conformer frames of ``helm_jax/data/embedded/molecules.extxyz``. Only NumPy and ASE
are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from ase import Atoms
from ase.build import molecule as g2_molecule


# --------------------------------------------------------------------------
# Reference-geometry builders
# --------------------------------------------------------------------------


def linear(symbols: list[str], bonds: list[float]) -> Atoms:
    """Builds a linear chain along z.

    Args:
        symbols: Element symbols in chain order (e.g. ``["H", "Be", "H"]``).
        bonds: Consecutive bond lengths in Angstrom, ``len(symbols) - 1``.

    Returns:
        The molecule, centred on its geometric centre.
    """
    z = np.concatenate([[0.0], np.cumsum(bonds)])
    pos = np.zeros((len(symbols), 3))
    pos[:, 2] = z - z.mean()
    return Atoms(symbols, positions=pos)


def bent(center: str, ligand: str, r: float, angle_deg: float) -> Atoms:
    """Builds a symmetric bent AX2 molecule (C2v) in the xz plane.

    Args:
        center: Central atom symbol.
        ligand: Ligand symbol.
        r: A-X bond length in Angstrom.
        angle_deg: X-A-X angle in degrees.

    Returns:
        The molecule with the central atom at the origin.
    """
    h = np.deg2rad(angle_deg) / 2.0
    pos = [[0.0, 0.0, 0.0], [r * np.sin(h), 0.0, r * np.cos(h)],
           [-r * np.sin(h), 0.0, r * np.cos(h)]]
    return Atoms([center, ligand, ligand], positions=pos)


def pyramidal(center: str, ligand: str, r: float, angle_deg: float) -> Atoms:
    """Builds a symmetric AX3 molecule (C3v, or D3h when the angle is 120).

    Args:
        center: Central atom symbol.
        ligand: Ligand symbol.
        r: A-X bond length in Angstrom.
        angle_deg: X-A-X angle in degrees (120 gives a planar D3h molecule).

    Returns:
        The molecule with the central atom at the origin, C3 axis along z.
    """
    theta = np.deg2rad(angle_deg)
    # Angle beta between each bond and the C3 axis: cos(theta) =
    # cos^2(beta) + sin^2(beta) cos(120 deg) => sin^2(beta) = 2/3 (1-cos theta).
    sin_b = np.sqrt(2.0 / 3.0 * (1.0 - np.cos(theta)))
    sin_b = min(sin_b, 1.0)
    cos_b = np.sqrt(1.0 - sin_b**2)
    pos = [[0.0, 0.0, 0.0]]
    for k in range(3):
        phi = 2.0 * np.pi * k / 3.0
        pos.append([r * sin_b * np.cos(phi), r * sin_b * np.sin(phi), -r * cos_b])
    return Atoms([center] + [ligand] * 3, positions=pos)


def planar_ax3(center: str, ligand: str, r: float) -> Atoms:
    """Builds a trigonal-planar AX3 molecule (D3h).

    Args:
        center: Central atom symbol.
        ligand: Ligand symbol.
        r: A-X bond length in Angstrom.

    Returns:
        The molecule with the central atom at the origin.
    """
    return pyramidal(center, ligand, r, 120.0)


def tetrahedral(center: str, ligand: str, r: float) -> Atoms:
    """Builds a tetrahedral AX4 molecule (Td).

    Args:
        center: Central atom symbol.
        ligand: Ligand symbol.
        r: A-X bond length in Angstrom.

    Returns:
        The molecule with the central atom at the origin.
    """
    dirs = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    pos = np.vstack([[0.0, 0.0, 0.0], r * dirs / np.sqrt(3.0)])
    return Atoms([center] + [ligand] * 4, positions=pos)


def methyl_halide(halogen: str, r_cx: float, r_ch: float,
                  angle_hcx_deg: float) -> Atoms:
    """Builds a CH3X molecule (C3v).

    Args:
        halogen: Halogen symbol X.
        r_cx: C-X bond length in Angstrom.
        r_ch: C-H bond length in Angstrom.
        angle_hcx_deg: H-C-X angle in degrees.

    Returns:
        The molecule with C at the origin and X along +z.
    """
    a = np.deg2rad(angle_hcx_deg)
    pos = [[0.0, 0.0, 0.0], [0.0, 0.0, r_cx]]
    for k in range(3):
        phi = 2.0 * np.pi * k / 3.0
        pos.append([r_ch * np.sin(a) * np.cos(phi),
                    r_ch * np.sin(a) * np.sin(phi), r_ch * np.cos(a)])
    return Atoms(["C", halogen, "H", "H", "H"], positions=pos)


def hydroxide(metal: str, r_mo: float, r_oh: float = 0.96) -> Atoms:
    """Builds a linear alkali hydroxide M-O-H.

    Args:
        metal: Alkali-metal symbol.
        r_mo: M-O bond length in Angstrom.
        r_oh: O-H bond length in Angstrom.

    Returns:
        The linear molecule.
    """
    return linear([metal, "O", "H"], [r_mo, r_oh])


# --------------------------------------------------------------------------
# Molecule table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MoleculeSpec:
    """One molecule of the embedded set.

    Attributes:
        name: Unique identifier written to ``info['name']``.
        build: Zero-argument callable returning the reference ``Atoms``.
        n_conformers: Number of frames to generate (>= 3).
        source: Short provenance note for the reference geometry.
        charge: Total charge.
        spin: 2S (number of unpaired electrons); 0 in :data:`MOLECULES`, non-zero for the
            radicals of :data:`OPEN_SHELL`.
    """

    name: str
    build: Callable[[], Atoms]
    n_conformers: int
    source: str
    charge: int = 0
    spin: int = 0


def _g2(name: str) -> Callable[[], Atoms]:
    return lambda: g2_molecule(name)


# Bond lengths in Angstrom, angles in degrees.  "exp" = experimental gas-phase
# structure (standard literature values of the kind tabulated in the CRC
# Handbook / NIST CCCBDB, entered by hand); "calc" = typical computed value where
# the molecule is not well characterised in the gas phase; "G2" = ASE's G2
# collection (MP2/6-31G* geometries).
# n_conformers was chosen from measured labelling times (see docs/data.md):
# cheap molecules get more conformers, the expensive ones 3.
MOLECULES: list[MoleculeSpec] = [
    MoleculeSpec("water", _g2("H2O"), 6, "G2"),
    MoleculeSpec("ammonia", _g2("NH3"), 6, "G2"),
    MoleculeSpec("methane", _g2("CH4"), 6, "G2"),
    MoleculeSpec("lithium_hydroxide", lambda: hydroxide("Li", 1.582), 5,
                 "exp Li-O 1.582; O-H 0.96 (typical)"),
    MoleculeSpec("beryllium_hydride", lambda: linear(["H", "Be", "H"],
                                                     [1.334, 1.334]), 6,
                 "exp Be-H 1.334"),
    MoleculeSpec("borane", lambda: planar_ax3("B", "H", 1.190), 6,
                 "exp B-H 1.190"),
    MoleculeSpec("carbon_dioxide", _g2("CO2"), 5, "G2"),
    MoleculeSpec("formaldehyde", _g2("H2CO"), 5, "G2"),
    MoleculeSpec("methanol", _g2("CH3OH"), 4, "G2"),
    MoleculeSpec("ethanol", _g2("CH3CH2OH"), 3, "G2"),
    MoleculeSpec("acetonitrile", _g2("CH3CN"), 3, "G2"),
    MoleculeSpec("tetrafluoromethane", _g2("CF4"), 3, "G2"),
    MoleculeSpec("sodium_hydroxide", lambda: hydroxide("Na", 1.950), 4,
                 "exp Na-O 1.950; O-H 0.96 (typical)"),
    MoleculeSpec("magnesium_hydride", lambda: linear(["H", "Mg", "H"],
                                                     [1.703, 1.703]), 5,
                 "exp Mg-H 1.703"),
    MoleculeSpec("alane", lambda: planar_ax3("Al", "H", 1.586), 5,
                 "calc Al-H 1.586"),
    MoleculeSpec("silane", _g2("SiH4"), 5, "G2"),
    MoleculeSpec("phosphine", _g2("PH3"), 5, "G2"),
    MoleculeSpec("hydrogen_sulfide", _g2("SH2"), 5, "G2"),
    MoleculeSpec("chloromethane", _g2("CH3Cl"), 4, "G2"),
    MoleculeSpec("potassium_hydroxide", lambda: hydroxide("K", 2.212), 4,
                 "exp K-O 2.212; O-H 0.96 (typical)"),
    MoleculeSpec("calcium_hydride", lambda: linear(["H", "Ca", "H"],
                                                   [2.045, 2.045]), 4,
                 "calc Ca-H 2.045, linear"),
    MoleculeSpec("gallane", lambda: planar_ax3("Ga", "H", 1.560), 4,
                 "calc Ga-H 1.560"),
    MoleculeSpec("germane", lambda: tetrahedral("Ge", "H", 1.525), 4,
                 "exp Ge-H 1.525"),
    MoleculeSpec("arsine", lambda: pyramidal("As", "H", 1.511, 92.1), 4,
                 "exp As-H 1.511, H-As-H 92.1"),
    MoleculeSpec("hydrogen_selenide", lambda: bent("Se", "H", 1.460, 90.6), 4,
                 "exp Se-H 1.460, H-Se-H 90.6"),
    MoleculeSpec("bromomethane", lambda: methyl_halide("Br", 1.934, 1.082,
                                                       107.7), 3,
                 "exp C-Br 1.934, C-H 1.082, H-C-Br 107.7"),
    MoleculeSpec("krypton_difluoride", lambda: linear(["F", "Kr", "F"],
                                                      [1.889, 1.889]), 3,
                 "exp Kr-F 1.889"),
    MoleculeSpec("rubidium_hydroxide", lambda: hydroxide("Rb", 2.301), 4,
                 "exp Rb-O 2.301; O-H 0.96 (typical)"),
    MoleculeSpec("strontium_hydride", lambda: bent("Sr", "H", 2.160, 140.0), 4,
                 "calc Sr-H 2.160, H-Sr-H 140"),
    MoleculeSpec("indigane", lambda: planar_ax3("In", "H", 1.720), 4,
                 "calc In-H 1.720"),
    MoleculeSpec("stannane", lambda: tetrahedral("Sn", "H", 1.711), 4,
                 "exp Sn-H 1.711"),
    MoleculeSpec("stibine", lambda: pyramidal("Sb", "H", 1.707, 91.6), 4,
                 "exp Sb-H 1.707, H-Sb-H 91.6"),
    MoleculeSpec("hydrogen_telluride", lambda: bent("Te", "H", 1.658, 90.3), 4,
                 "exp Te-H 1.658, H-Te-H 90.3"),
    MoleculeSpec("iodomethane", lambda: methyl_halide("I", 2.132, 1.084,
                                                      107.2), 3,
                 "exp C-I 2.132, C-H 1.084, H-C-I 107.2"),
    MoleculeSpec("xenon_difluoride", lambda: linear(["F", "Xe", "F"],
                                                    [1.977, 1.977]), 3,
                 "exp Xe-F 1.977"),
    MoleculeSpec("caesium_hydroxide", lambda: hydroxide("Cs", 2.391), 4,
                 "exp Cs-O 2.391; O-H 0.96 (typical)"),
    MoleculeSpec("barium_hydride", lambda: bent("Ba", "H", 2.230, 120.0), 4,
                 "calc Ba-H 2.230, H-Ba-H 120"),
    MoleculeSpec("hafnium_hydride", lambda: tetrahedral("Hf", "H", 1.830), 3,
                 "calc Hf-H 1.830"),
    MoleculeSpec("mercury_hydride", lambda: linear(["H", "Hg", "H"],
                                                   [1.633, 1.633]), 4,
                 "exp Hg-H 1.633"),
    MoleculeSpec("thallane", lambda: planar_ax3("Tl", "H", 1.730), 4,
                 "calc Tl-H 1.730"),
    MoleculeSpec("plumbane", lambda: tetrahedral("Pb", "H", 1.750), 4,
                 "calc Pb-H 1.750"),
    MoleculeSpec("bismuthine", lambda: pyramidal("Bi", "H", 1.778, 90.5), 4,
                 "exp Bi-H 1.778, H-Bi-H 90.5"),
]


# Open-shell and charged species of the same elements (``open_shell.extxyz``): radicals
# (doublets and two triplets), radical ions and closed-shell ions, 4 conformers each. They
# are labelled unrestricted (UKS) where 2S > 0 and restricted otherwise; the closed-shell set
# above is unchanged, so the default dataset's labels and cache stay valid.
OPEN_SHELL: list[MoleculeSpec] = [
    # neutral radicals, 2S = 1 (G2 = ASE's G2 collection, UMP2/6-31G* geometries)
    MoleculeSpec("methyl", _g2("CH3"), 4, "G2", spin=1),
    MoleculeSpec("amino", _g2("NH2"), 4, "G2", spin=1),
    MoleculeSpec("formyl", _g2("HCO"), 4, "G2", spin=1),
    MoleculeSpec("methoxy", _g2("CH3O"), 4, "G2", spin=1),
    MoleculeSpec("vinyl", _g2("C2H3"), 4, "G2", spin=1),
    MoleculeSpec("nitrogen_dioxide", _g2("NO2"), 4, "G2", spin=1),
    MoleculeSpec("silyl", _g2("SiH3"), 4, "G2", spin=1),
    MoleculeSpec("phosphino", _g2("PH2"), 4, "G2", spin=1),
    MoleculeSpec("methylthio", _g2("CH3S"), 4, "G2", spin=1),
    MoleculeSpec("germyl", lambda: pyramidal("Ge", "H", 1.530, 111.0), 4,
                 "calc Ge-H 1.530, H-Ge-H 111", spin=1),
    MoleculeSpec("stannyl", lambda: pyramidal("Sn", "H", 1.720, 110.0), 4,
                 "calc Sn-H 1.720, H-Sn-H 110", spin=1),
    # triplets, 2S = 2
    MoleculeSpec("methylene_triplet", _g2("CH2_s3B1d"), 4, "G2", spin=2),
    MoleculeSpec("silylene_triplet", _g2("SiH2_s3B1d"), 4, "G2", spin=2),
    # radical ions, 2S = 1
    MoleculeSpec("water_cation", lambda: bent("O", "H", 0.999, 109.3), 4,
                 "calc O-H 0.999, H-O-H 109.3", charge=1, spin=1),
    MoleculeSpec("ammonia_cation", lambda: planar_ax3("N", "H", 1.021), 4,
                 "calc N-H 1.021, planar", charge=1, spin=1),
    MoleculeSpec("carbon_dioxide_anion", lambda: bent("C", "O", 1.250, 134.0), 4,
                 "calc C-O 1.250, O-C-O 134", charge=-1, spin=1),
    # closed-shell ions, 2S = 0
    MoleculeSpec("hydronium", lambda: pyramidal("O", "H", 0.976, 111.3), 4,
                 "calc O-H 0.976, H-O-H 111.3", charge=1),
    MoleculeSpec("ammonium", lambda: tetrahedral("N", "H", 1.021), 4,
                 "calc N-H 1.021", charge=1),
    MoleculeSpec("amide_anion", lambda: bent("N", "H", 1.030, 102.0), 4,
                 "calc N-H 1.030, H-N-H 102", charge=-1),
    MoleculeSpec("nitrite", lambda: bent("N", "O", 1.250, 115.0), 4,
                 "calc N-O 1.250, O-N-O 115", charge=-1),
    MoleculeSpec("borohydride", lambda: tetrahedral("B", "H", 1.240), 4,
                 "calc B-H 1.240", charge=-1),
]
