"""Reference quantum-chemistry targets from a converged PySCF calculation (labeller side, numpy).

Definitions are those of :mod:`helm_jax.orbitals`, so the exact Fock matrix gives zero loss:

* ``ao_dipole`` ``[3, N, N]`` (bohr): AO dipole integrals ``<mu| r - O |nu>``
  (``mol.intor_symmetric('int1e_r', comp=3)``) about the origin ``O`` = ``dipole_origin``
  ``[3]`` (bohr), which is ``(0, 0, 0)``, PySCF's default for ``dip_moment``.
* ``mo_energy`` ``[N - d]`` (Eh): generalised eigenvalues of the stored ``(F, S)``, ascending,
  by :func:`helm_jax.orbitals.orbitals_numpy`: ``d`` overlap eigen-directions at or below
  :data:`helm_jax.orbitals.S_THRESHOLD` (near-linear dependence) are dropped, as in training.
* ``dipole`` ``[3]`` (au, e bohr): ``sum_A Z_A (R_A - O) - Tr(P r)`` with ``P = 2 C_occ C_occ^T``
  from the stored F (PySCF's ``dip_moment`` of that density; equal to the SCF dipole within
  the SCF tolerance). ``Z_A`` are the nuclear charges seen by the electrons (ECP cores off).
* ``polarizability`` ``[3, 3]`` (au): non-self-consistent, F held fixed:
  ``alpha_kl = d mu_k / d E_l`` of ``F + sum_l E_l r_l`` (the electron's energy in a uniform
  field E), ``= 4 sum_{i occ, a virt} r_k,ia r_l,ia / (e_a - e_i)``; positive definite.
  **This is the training target**: it is what :func:`helm_jax.orbitals.polarizability` computes
  from a Hamiltonian.
* ``polarizability_ff`` ``[3, 3]`` (au, optional): fully self-consistent finite-field value,
  central differences of the SCF dipole with ``h_core + E r``, ``E = +-1e-3`` au (six SCFs
  started from the converged density, orbital gradients converged to 1e-8); NaN if one of
  them did not converge. About 3.5x the cost of the SCF itself. Stored for
  reference and for configs that ask for it (``config.qm.self_consistent_polarizability``).

Large-basis targets (reduced-basis learning) are the same quantities of a calculation in a
larger basis at the same geometry, level and settings, stored under ``targets_*`` names
(``targets_mo_energy [N_large - d]``, ``targets_dipole``, ``targets_polarizability``,
``targets_polarizability_ff``).
"""

from __future__ import annotations

import copy

import numpy as np

DIPOLE_ORIGIN = np.zeros(3)  # bohr
FIELD_STEP = 1e-3  # au (Eh / (e bohr))
FIELD_CONV_TOL_GRAD = 1e-8  # the difference quotient divides dipole errors by 2 * FIELD_STEP


def ao_dipole(mol) -> np.ndarray:
    """AO dipole integrals ``[3, N, N]`` (bohr) about :data:`DIPOLE_ORIGIN`."""
    with mol.with_common_orig(DIPOLE_ORIGIN):
        return mol.intor_symmetric("int1e_r", comp=3)


def nuclear_dipole(mol) -> np.ndarray:
    """``sum_A Z_A (R_A - O)`` ``[3]`` (au) with ECP-reduced charges."""
    return mol.atom_charges() @ (mol.atom_coords() - DIPOLE_ORIGIN)


def orbital_properties(mol, fock: np.ndarray, overlap: np.ndarray) -> dict[str, np.ndarray]:
    """Orbital energies, dipole and non-self-consistent polarisability of a Fock matrix.

    Args:
      mol: the PySCF molecule (closed shell).
      fock: ``[N, N]`` Fock matrix (Eh).
      overlap: ``[N, N]`` AO overlap.

    Returns:
      ``{"ao_dipole", "dipole_origin", "mo_energy", "dipole", "polarizability"}``.
    """
    from helm_jax import orbitals  # Local import: it pulls in jax, which plain labelling never needs.

    n_occ = mol.nelectron // 2
    r = ao_dipole(mol)  # [3, N, N]
    e, c = orbitals.orbitals_numpy(fock, overlap)  # [N - d], [N, N - d]
    occ, vir = c[:, :n_occ], c[:, n_occ:]
    density = 2.0 * occ @ occ.T
    dipole = nuclear_dipole(mol) - np.einsum("xij,ji->x", r, density)
    r_ov = np.einsum("pi,xpq,qa->xia", occ, r, vir)  # [3, n_occ, n_vir]
    gap = e[n_occ:][None, :] - e[:n_occ][:, None]  # [n_occ, n_vir]
    alpha = 4.0 * np.einsum("kia,lia->kl", r_ov, r_ov / gap)
    return {"ao_dipole": r, "dipole_origin": DIPOLE_ORIGIN.copy(), "mo_energy": e,
            "dipole": dipole, "polarizability": alpha}


def finite_field_polarizability(mf, step: float = FIELD_STEP) -> np.ndarray:
    """Self-consistent polarisability ``[3, 3]`` (au) by central differences of the dipole.

    Args:
      mf: a converged restricted SCF object (RHF/RKS, density fitting allowed).
      step: field strength (au).

    Returns:
      ``alpha[k, l] = (mu_k(+step e_l) - mu_k(-step e_l)) / (2 step)``; NaN if a field SCF
      did not converge.
    """
    mol = mf.mol
    h0 = mf.get_hcore()
    dm0 = mf.make_rdm1()
    r = ao_dipole(mol)
    alpha = np.zeros((3, 3))
    for l in range(3):
        mus = []
        for sign in (1.0, -1.0):
            field = copy.copy(mf)
            # PySCF's copy goes through its pickle methods, which set the direct-SCF
            # integral-screening cache to None; direct SCF (chosen when the in-core ERIs do
            # not fit in max_memory) then fails on it. Give the copy a fresh cache.
            field._opt = {None: None}
            h1 = h0 + sign * step * r[l]
            field.get_hcore = lambda *_, h1=h1: h1
            field.conv_tol_grad = FIELD_CONV_TOL_GRAD
            field.kernel(dm0=dm0)
            if not field.converged:
                return np.full((3, 3), np.nan)
            mus.append(nuclear_dipole(mol) - np.einsum("xij,ji->x", r, field.make_rdm1()))
        alpha[:, l] = (mus[0] - mus[1]) / (2 * step)
    return alpha


def scf_properties(mf, fock: np.ndarray, finite_field: bool = False,
                   prefix: str = "") -> dict[str, np.ndarray]:
    """All stored properties of one converged SCF (see the module docstring).

    Args:
      mf: the converged SCF object.
      fock: its Fock matrix ``[N, N]``.
      finite_field: also compute ``polarizability_ff`` (six more SCFs).
      prefix: prepended to every name (``"targets_"`` for large-basis targets, which keep
        only the basis-independent quantities: no AO integrals).

    Returns:
      ``{name: array}``.
    """
    out = orbital_properties(mf.mol, fock, mf.get_ovlp())
    if finite_field:
        out["polarizability_ff"] = finite_field_polarizability(mf)
    if prefix:
        out = {prefix + k: v for k, v in out.items() if k not in ("ao_dipole", "dipole_origin")}
    return out
