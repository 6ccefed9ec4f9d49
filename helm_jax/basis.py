"""Gaussian basis descriptions built from PySCF, and per-dataset block templates.

An element's basis is a list of shells in PySCF AO order. Each shell has an angular
momentum ``l`` and occupies ``2l + 1`` consecutive real spherical AOs. A *template* is the
per-dataset padding layout of one atom's AOs: for each ``l`` the largest number of shells
of that ``l`` over the dataset's elements, laid out l-major (all s slots, then all p
slots, ...). Every atom's diagonal block and every atom pair's block is padded to
``[A, A]`` with ``A = template.n_ao``; slots an element does not have are masked.

Example (def2-TZVPD over the 58 OMol_CSH elements): ``7s 6p 5d 2f``, 64 AOs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import numpy as np

# Symbols in Z order (index = Z). Kept here so no module needs ase just for symbols.
SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
    "Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr "
    "Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra "
    "Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts "
    "Og"
).split()

#: The 58 elements of OMol_CSH_58k (Z 1-20, 31-56, 72-83).
OMOL_CSH_ELEMENTS = tuple(
    list(range(1, 21)) + list(range(31, 57)) + list(range(72, 84)))

_SHELL_LETTERS = "spdfghi"


def atomic_number(element: int | str) -> int:
    """Returns Z for a symbol (case-insensitive) or an int; raises on unknown input."""
    if isinstance(element, (int, np.integer)):
        z = int(element)
        if not 1 <= z < len(SYMBOLS):
            raise ValueError(
                f"Unknown atomic number {z}: helm_jax knows Z = 1..{len(SYMBOLS) - 1}.")
        return z
    sym = str(element).strip().capitalize()
    if sym not in SYMBOLS[1:]:
        raise ValueError(f"Unknown element symbol {element!r}.")
    return SYMBOLS.index(sym)


def symbol(z: int) -> str:
    """Returns the element symbol of atomic number ``z``."""
    return SYMBOLS[atomic_number(z)]


def _norm_name(name: str | None) -> str:
    return "" if name is None else str(name).strip().lower()


@dataclasses.dataclass(frozen=True)
class ElementBasis:
    """One element's shells in PySCF AO order.

    Attributes:
      z: atomic number.
      shell_l: angular momentum of each shell, PySCF ``mol._bas`` order, with general
        contractions expanded (a PySCF shell with ``nctr`` contractions counts ``nctr``
        times; PySCF orders its AOs contraction-major, so this is exact).
      shell_offsets: first AO index of each shell within the atom.
      n_ao: number of AOs of the atom.
      ecp_electrons: core electrons replaced by an ECP (0 without ECP).
    """

    z: int
    shell_l: tuple[int, ...]
    shell_offsets: tuple[int, ...]
    n_ao: int
    ecp_electrons: int

    @property
    def counts(self) -> tuple[int, ...]:
        """Number of shells for each l = 0..max l."""
        lmax = max(self.shell_l)
        return tuple(self.shell_l.count(l) for l in range(lmax + 1))

    def describe(self) -> str:
        """A short string like ``3s2p1d``."""
        return "".join(f"{n}{_SHELL_LETTERS[l]}" for l, n in enumerate(self.counts) if n)


@functools.lru_cache(maxsize=None)
def element_basis(element: int | str, basis: str, ecp: str | None = None) -> ElementBasis:
    """Builds one element's shell list from PySCF.

    Args:
      element: atomic number or symbol.
      basis: any basis name PySCF knows (e.g. ``"def2-svp"``, ``"def2-tzvpd"``).
      ecp: ECP name (e.g. ``"def2-tzvpd"``) for elements beyond Kr; ``None`` for all-electron.

    Returns:
      The element's :class:`ElementBasis`.

    Raises:
      ValueError: the basis (or ECP) does not cover the element, or a def2 basis is asked
        for an element beyond Kr without its ECP.
    """
    from pyscf import gto  # Local import: PySCF is slow to import.

    z = atomic_number(element)
    sym = SYMBOLS[z]
    if _norm_name(basis).startswith("def2") and z > 36 and not ecp:
        raise ValueError(
            f"The def2 basis {basis!r} for {sym} (Z={z}) is meant to be used with its ECP; "
            f"pass ecp={basis!r} (or another ECP name).")
    has_ecp = bool(ecp) and bool(gto.basis.load_ecp(ecp, sym))
    try:
        # Spin parity only; ECPs remove an even number of electrons.
        mol = gto.M(atom=f"{sym} 0 0 0", basis=basis, ecp=ecp if has_ecp else {},
                    spin=z % 2, verbose=0)
    except Exception as err:  # PySCF raises several types for a missing basis.
        raise ValueError(
            f"Basis {basis!r}" + (f" / ECP {ecp!r}" if ecp else "")
            + f" does not cover element {sym} (Z={z}): {err}. Choose a basis that "
            "covers every element of the dataset.") from err
    if mol.nbas == 0:
        raise ValueError(f"Basis {basis!r} has no shells for element {sym} (Z={z}).")
    if ecp and z > 36 and not has_ecp:
        raise ValueError(f"ECP {ecp!r} does not cover element {sym} (Z={z}).")
    shell_l: list[int] = []
    for ib in range(mol.nbas):
        shell_l += [int(mol.bas_angular(ib))] * int(mol.bas_nctr(ib))
    offsets = np.concatenate([[0], np.cumsum([2 * l + 1 for l in shell_l])[:-1]])
    n_ao = int(sum(2 * l + 1 for l in shell_l))
    if n_ao != mol.nao:
        raise AssertionError(f"{sym}/{basis}: shell sizes {n_ao} != nao {mol.nao}")
    return ElementBasis(z=z, shell_l=tuple(shell_l),
                        shell_offsets=tuple(int(o) for o in offsets), n_ao=n_ao,
                        ecp_electrons=int(mol.atom_nelec_core(0)))


@dataclasses.dataclass(frozen=True)
class Template:
    """The per-dataset padded layout of one atom's AOs.

    Slots are l-major: all s shells, then p, d, ...; slot ``k`` of angular momentum ``l``
    receives an element's ``k``-th shell of that ``l`` (PySCF order).

    Attributes:
      basis: basis name.
      ecp: ECP name or "".
      elements: atomic numbers covered, sorted.
      counts: number of shell slots per l (``counts[l]``).
    """

    basis: str
    ecp: str
    elements: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def l_max(self) -> int:
        """Largest angular momentum of the template."""
        return len(self.counts) - 1

    @property
    def slot_l(self) -> tuple[int, ...]:
        """Angular momentum of each template shell slot, l-major."""
        return tuple(l for l, n in enumerate(self.counts) for _ in range(n))

    @property
    def slot_offsets(self) -> tuple[int, ...]:
        """First template AO of each shell slot."""
        sizes = [2 * l + 1 for l in self.slot_l]
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]]))

    @property
    def n_ao(self) -> int:
        """Number of template AOs per atom (``A``)."""
        return int(sum(n * (2 * l + 1) for l, n in enumerate(self.counts)))

    def describe(self) -> str:
        """A short string like ``7s6p5d2f``."""
        return "".join(f"{n}{_SHELL_LETTERS[l]}" for l, n in enumerate(self.counts) if n)

    def element(self, z: int | str) -> ElementBasis:
        """The basis of one element of this template (clear error if not covered)."""
        z = atomic_number(z)
        if z not in self.elements:
            raise ValueError(
                f"Element {SYMBOLS[z]} (Z={z}) is not in this template's elements "
                f"{[SYMBOLS[e] for e in self.elements]} (basis {self.basis!r}); rebuild the "
                "template with it, e.g. make_template(elements + [z], basis, ecp).")
        return element_basis(z, self.basis, self.ecp or None)

    def ao_map(self, z: int | str) -> np.ndarray:
        """Template AO index of each of the element's PySCF AOs.

        Returns:
          int array ``[n_ao(element)]`` with values in ``[0, A)``.
        """
        return _ao_map(self, atomic_number(z))

    def ao_mask(self, z: int | str) -> np.ndarray:
        """Boolean ``[A]``: which template AOs the element occupies."""
        mask = np.zeros(self.n_ao, bool)
        mask[self.ao_map(z)] = True
        return mask

    def slot_mask(self, z: int | str) -> np.ndarray:
        """Boolean ``[n_slots]``: which template shell slots the element occupies."""
        eb = self.element(z)
        return np.array([k < eb.shell_l.count(l) for l, n in enumerate(self.counts)
                         for k in range(n)], bool)

    def to_dict(self) -> dict:
        """A JSON-serialisable description (stored in checkpoints)."""
        return {"basis": self.basis, "ecp": self.ecp, "elements": list(self.elements),
                "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: dict) -> "Template":
        """Inverse of :meth:`to_dict`."""
        return cls(basis=d["basis"], ecp=d["ecp"], elements=tuple(d["elements"]),
                   counts=tuple(d["counts"]))


@functools.lru_cache(maxsize=None)
def _ao_map(template: Template, z: int) -> np.ndarray:
    eb = template.element(z)
    slot_offsets = template.slot_offsets
    first_slot = np.concatenate([[0], np.cumsum(template.counts)[:-1]])
    seen = [0] * (template.l_max + 1)
    out = []
    for l in eb.shell_l:
        if l > template.l_max or seen[l] >= template.counts[l]:
            raise AssertionError(f"Template {template.describe()} cannot hold {eb.describe()}")
        slot = first_slot[l] + seen[l]
        seen[l] += 1
        out.extend(range(slot_offsets[slot], slot_offsets[slot] + 2 * l + 1))
    result = np.asarray(out, np.int64)
    result.setflags(write=False)
    return result


def make_template(elements: Iterable[int | str], basis: str,
                  ecp: str | None = None) -> Template:
    """Builds the padded template of a set of elements.

    Args:
      elements: atomic numbers or symbols (duplicates are fine).
      basis: PySCF basis name.
      ecp: PySCF ECP name for elements beyond Kr, or None.

    Returns:
      The :class:`Template` whose ``counts[l]`` is the maximum number of shells of
      angular momentum ``l`` over the elements.
    """
    zs = sorted({atomic_number(e) for e in elements})
    if not zs:
        raise ValueError("make_template needs at least one element.")
    per = [element_basis(z, basis, ecp) for z in zs]
    lmax = max(max(eb.shell_l) for eb in per)
    counts = tuple(max(eb.shell_l.count(l) for eb in per) for l in range(lmax + 1))
    return Template(basis=basis, ecp=ecp or "", elements=tuple(zs), counts=counts)


def molecule_ao_slices(elements: Sequence[int], basis: str,
                       ecp: str | None = None) -> list[slice]:
    """AO range of each atom in a molecule's PySCF AO order (atoms in input order)."""
    out, start = [], 0
    for z in elements:
        n = element_basis(int(z), basis, ecp).n_ao
        out.append(slice(start, start + n))
        start += n
    return out


def molecule_n_ao(elements: Sequence[int], basis: str, ecp: str | None = None) -> int:
    """Number of AOs of a molecule (sum over its atoms)."""
    return int(sum(element_basis(int(z), basis, ecp).n_ao for z in elements))
