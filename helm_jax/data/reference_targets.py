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

Unrestricted (UKS/UHF) labels, whose Fock matrix is a ``[2, N, N]`` pair (alpha, beta):

* ``mo_energy`` is ``[2, N - d]``: row 0 the alpha and row 1 the beta orbital energies, each
  the generalised eigenvalues of its own Fock matrix with the shared overlap (same ``d``).
* ``dipole`` ``[3]`` is that of the total density ``P = Ca_occ Ca_occ^T + Cb_occ Cb_occ^T``
  (``n_alpha``, ``n_beta`` = ``mol.nelec`` orbitals of each spin occupied).
* ``polarizability`` ``[3, 3]`` sums the two spin channels, each with one electron per
  orbital: ``alpha_kl = 2 sum_s sum_{i occ_s, a virt_s} r_k,ia r_l,ia / (e_a - e_i)`` (for
  identical alpha and beta matrices this is the restricted formula above).
* ``polarizability_ff`` uses the same UKS/UHF for the six field SCFs and the total density.

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
      mol: the PySCF molecule (its ``nelec`` gives the occupations).
      fock: ``[N, N]`` restricted Fock matrix (Eh; closed shell), or ``[2, N, N]`` the alpha
        and beta Fock matrices of an unrestricted calculation.
      overlap: ``[N, N]`` AO overlap.

    Returns:
      ``{"ao_dipole", "dipole_origin", "mo_energy", "dipole", "polarizability"}``;
      ``mo_energy`` is ``[N - d]`` for a restricted and ``[2, N - d]`` for an unrestricted
      Fock matrix (see the module docstring).

    Raises:
      ValueError: a restricted Fock matrix of an open-shell molecule, or a wrong shape.
    """
    from helm_jax import orbitals  # Local import: it pulls in jax, which plain labelling never needs.

    fock = np.asarray(fock, np.float64)
    n = np.shape(overlap)[-1]
    if fock.shape == (n, n):
        if mol.spin != 0:
            raise ValueError(f"a restricted [N, N] Fock matrix cannot describe spin 2S={mol.spin};"
                             " pass the [2, N, N] alpha and beta Fock matrices")
        channels = [(fock, mol.nelectron // 2, 2.0)]  # (F, occupied orbitals, electrons each)
    elif fock.shape == (2, n, n):
        n_alpha, n_beta = mol.nelec
        channels = [(fock[0], n_alpha, 1.0), (fock[1], n_beta, 1.0)]
    else:
        raise ValueError(f"fock must be [N, N] or [2, N, N] with N={n}, got {list(fock.shape)}")
    r = ao_dipole(mol)  # [3, N, N]
    density = np.zeros((n, n))
    alpha = np.zeros((3, 3))
    energies = []
    for f, n_occ, weight in channels:
        e, c = orbitals.orbitals_numpy(f, overlap)  # [N - d], [N, N - d]
        occ, vir = c[:, :n_occ], c[:, n_occ:]
        density += weight * occ @ occ.T
        r_ov = np.einsum("pi,xpq,qa->xia", occ, r, vir)  # [3, n_occ, n_vir]
        gap = e[n_occ:][None, :] - e[:n_occ][:, None]  # [n_occ, n_vir]
        alpha += 2.0 * weight * np.einsum("kia,lia->kl", r_ov, r_ov / gap)
        energies.append(e)
    dipole = nuclear_dipole(mol) - np.einsum("xij,ji->x", r, density)
    mo_energy = energies[0] if len(energies) == 1 else np.stack(energies)
    return {"ao_dipole": r, "dipole_origin": DIPOLE_ORIGIN.copy(), "mo_energy": mo_energy,
            "dipole": dipole, "polarizability": alpha}


def _total_density(dm: np.ndarray) -> np.ndarray:
    """``[N, N]`` total density of a restricted ``[N, N]`` or unrestricted ``[2, N, N]`` one."""
    dm = np.asarray(dm)
    return dm if dm.ndim == 2 else dm[0] + dm[1]


def finite_field_polarizability(mf, step: float = FIELD_STEP) -> np.ndarray:
    """Self-consistent polarisability ``[3, 3]`` (au) by central differences of the dipole.

    Args:
      mf: a converged SCF object (RHF/RKS or UHF/UKS, density fitting allowed); the field
        SCFs are of the same kind, started from its density.
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
            mus.append(nuclear_dipole(mol)
                       - np.einsum("xij,ji->x", r, _total_density(field.make_rdm1())))
        alpha[:, l] = (mus[0] - mus[1]) / (2 * step)
    return alpha


def scf_properties(mf, fock: np.ndarray, finite_field: bool = False,
                   prefix: str = "") -> dict[str, np.ndarray]:
    """All stored properties of one converged SCF (see the module docstring).

    Args:
      mf: the converged SCF object (restricted or unrestricted).
      fock: its Fock matrix, ``[N, N]`` (restricted) or ``[2, N, N]`` (alpha, beta), as
        ``mf.get_fock(dm=mf.make_rdm1())`` returns it.
      finite_field: also compute ``polarizability_ff`` (six more SCFs).
      prefix: prepended to every name (``"targets_"`` for large-basis targets, which keep
        only the basis-independent quantities: no AO integrals).

    Returns:
      ``{name: array}``.
    """
    out = orbital_properties(mf.mol, np.asarray(fock), mf.get_ovlp())
    if finite_field:
        out["polarizability_ff"] = finite_field_polarizability(mf)
    if prefix:
        out = {prefix + k: v for k, v in out.items() if k not in ("ao_dipole", "dipole_origin")}
    return out
