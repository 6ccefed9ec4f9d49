"""Differentiable quantum chemistry of a Hamiltonian: orbitals, density, dipole, polarisability.

Pure ``jax.numpy``, one molecule per call (``jax.vmap`` for a padded batch), jit-able and
differentiable. Closed shell (restricted H, :func:`solve`, :func:`properties`): ``n_occ``
doubly occupied orbitals. Open shell (an alpha and a beta H, :func:`solve_spins`,
:func:`properties_spins`): ``n_alpha`` and ``n_beta`` singly occupied orbitals of each spin's
H. AO matrices are ``[n, n]`` with a boolean ``ao_mask [n]`` of the molecule's real AOs;
padded slots are ignored.

Generalised eigenproblem ``H C = S C e`` by canonical (Lowdin) orthogonalisation:
``S = U L U^T``, ``X = U L^-1/2`` over the eigenvalues ``L > s_threshold``, then
``eigh(X^T H X)``. **Guard for (near-)linearly dependent S**: an eigen-direction of S with
``L <= s_threshold`` is dropped. This module is the one home of that rule
(:func:`canonical_orthogonalizer`) and of its threshold (:data:`S_THRESHOLD`): the training
losses (:func:`solve`), the evaluation metrics (:mod:`helm_jax.pyscf_metrics`) and the labeller's
targets (:mod:`helm_jax.data.reference_targets`, through :func:`orbitals_numpy`) all use them, so
a molecule has the same orbitals everywhere. In :func:`solve` a dropped column of X is zero and
gets the eigenvalue ``shift`` of the orthogonal-basis matrix, one more than a Gershgorin bound
of all the others, so it sorts after every real orbital and is never occupied. Padded AO
slots are zeroed in H and S, so they are dropped the same way. A molecule with ``n_ao`` AOs
and ``d`` dropped directions has ``n_ao - d`` orbitals at the front of ``mo_energy``
(``n_orbitals``); the rest must be masked out by the caller. :func:`orbitals_numpy` returns
just those ``n_ao - d``. S is data: no derivative is taken with respect to it.

Dipole (au, e bohr) about the origin of the AO dipole integrals ``r = <mu| r - O |nu>``:
``mu = sum_A Z_A (R_A - O) - Tr(P r)``, ``P = 2 C_occ C_occ^T``.

Polarisability (au) by autodiff, **non-self-consistent** (H held fixed, no response of the
electrons' potential): ``alpha_kl = d mu_k / d E_l`` of ``H + sum_l E_l r_l``. The term
``+E.r`` is the energy of an electron (charge -1) in the uniform field E (potential
``-E.r``), so ``alpha = 4 sum_{i occ, a virt} r_k,ia r_l,ia / (e_a - e_i)`` is positive.

Open shells (unrestricted, docs/qm_targets.md "Open shells"; the labeller's definitions in
:mod:`helm_jax.data.reference_targets`): each spin ``s`` has its own H ``F_s`` and orbitals
(same overlap, same dropped directions), ``P_s = C_s,occ C_s,occ^T`` over its ``n_s`` lowest
orbitals, and the dipole is that of the total density ``P = P_alpha + P_beta``. The
polarisability ``d mu / d E`` adds ``E.r`` to both ``F_s``; it is the sum of the two spins'
responses with one electron per orbital, ``2 sum_s sum_{i occ_s, a virt_s} r_k,ia r_l,ia /
(e_a - e_i)``. For ``F_alpha = F_beta`` and ``n_alpha = n_beta`` every quantity equals the
restricted one. The gap of an open shell (:func:`homo_lumo_gap_spins`) is the lowest
virtual orbital energy over both spins minus the highest occupied one over both.

Gradients stay finite for degenerate orbitals: the occupied projector ``Q`` has a custom JVP
(perturbation theory) in which only occupied-virtual pairs appear, through
``g_ia = 1 / (e_a - e_i)``; its first derivative has a custom JVP of its own (second divided
differences of the occupation function, again only occupied-virtual gaps), so the gradient
of a polarisability loss is stable too. Individual eigenvalues have the usual first-order
derivative ``diag(V^T dH V)``. Only a vanishing HOMO-LUMO gap is singular.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

S_THRESHOLD = 1e-7  # overlap eigenvalues at or below this are dropped (linear dependence)


class Orbitals(NamedTuple):
    """The solution of one molecule's generalised eigenproblem.

    :func:`solve_spins` returns the same fields with a leading spin axis (alpha, beta) on
    ``mo_energy``, ``density`` (then ``P_s = C_s,occ C_s,occ^T``) and ``mo_coeff``.

    Attributes:
      mo_energy: ``[n]`` ascending; entries from ``n_orbitals`` on are padding.
      density: ``[n, n]`` closed-shell density matrix ``P = 2 C_occ C_occ^T`` (AO basis).
      mo_coeff: ``[n, n]`` orbital coefficients (columns), without gradient: use
        ``mo_energy`` and ``density`` in losses.
      n_orbitals: number of real orbitals (overlap eigen-directions kept).
    """

    mo_energy: jax.Array
    density: jax.Array
    mo_coeff: jax.Array
    n_orbitals: jax.Array


def canonical_orthogonalizer(s, s_threshold: float = S_THRESHOLD, xp=np):
    """The canonical-orthogonalisation rule: ``X = U L^-1/2`` over ``L > s_threshold``.

    The one definition of the rule, for ``numpy`` (``xp=np``) and ``jax.numpy``
    (``xp=jnp``, jit-able: the shapes do not depend on how many directions are dropped).

    Args:
      s: ``[n, n]`` symmetric overlap.
      s_threshold: overlap eigenvalues ``<=`` this are dropped (linear dependence).
      xp: the array module.

    Eigenvalues below the working precision are dropped too: ``lam <= n * eps * max(lam)``
    (the rank rule of ``numpy.linalg.matrix_rank``), which only bites in float32, where an
    overlap eigenvalue below about 1e-6 is rounding noise (it may come out above
    ``s_threshold`` and would blow up as ``lam^-1/2``). In float64 it is far below
    ``s_threshold``.

    Returns:
      ``(x [n, n], keep [n] bool)`` with ``x^T S x = diag(keep)``; dropped columns are zero.
    """
    lam, u = xp.linalg.eigh(s)
    noise = lam.shape[-1] * xp.finfo(lam.dtype).eps * xp.max(xp.abs(lam))
    keep = lam > xp.maximum(s_threshold, noise)
    return u * xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, lam, 1.0)), 0.0), keep


def orthogonalizer(s, ao_mask, s_threshold: float = S_THRESHOLD):
    """:func:`canonical_orthogonalizer` of the real-AO block of a padded overlap (JAX).

    Args:
      s: ``[n, n]`` overlap (no gradient flows through it).
      ao_mask: ``[n]`` bool, real AOs; padded slots are zeroed, hence dropped.
      s_threshold: overlap eigenvalues ``<=`` this are dropped.

    Returns:
      ``(x [n, n], keep [n])`` with ``x^T S x = diag(keep)``; dropped columns are zero.
    """
    mask2 = ao_mask[:, None] & ao_mask[None, :]
    s = jnp.where(mask2, jax.lax.stop_gradient(s), 0.0)
    return canonical_orthogonalizer(s, s_threshold, jnp)


def orbitals_numpy(h, s, s_threshold: float = S_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The orbitals of :func:`solve` for one unpadded molecule, in NumPy float64 on the host.

    The same rule and threshold as :func:`solve` (:func:`canonical_orthogonalizer`); the
    dropped directions are left out rather than shifted to the end. NumPy rather than jax on
    host arrays because the evaluation scripts and the labeller solve one molecule of a new
    size at a time: NumPy's LAPACK call costs no compilation per AO count and stays float64
    without ``jax_enable_x64`` (jax defaults to float32).

    Args:
      h: ``[n, n]`` symmetric Hamiltonian / Fock matrix (Eh).
      s: ``[n, n]`` AO overlap.
      s_threshold: overlap eigenvalues ``<=`` this are dropped.

    Returns:
      ``(e [m], c [n, m])``: the ``m = n - d`` ascending orbital energies and MO coefficients
      (columns, ``c^T S c = 1``) with ``d`` dropped directions.
    """
    x, keep = canonical_orthogonalizer(np.asarray(s, np.float64), s_threshold, np)
    x = x[:, keep]
    e, v = np.linalg.eigh(_sym(x.T @ np.asarray(h, np.float64) @ x))
    return e, x @ v


def _occupied_virtual_inverse_gaps(w, occ):
    """``g [n, n]``: ``1 / (w_j - w_i)`` for occupied i and virtual j, else 0."""
    pair = (occ[:, None] > 0) & (occ[None, :] == 0)
    return jnp.where(pair, 1.0 / jnp.where(pair, w[None, :] - w[:, None], 1.0), 0.0)


def _sym(a):
    return (a + a.T) / 2


@jax.custom_jvp
def _spectrum(ht, occ):
    """Eigenvalues ``[n]`` and occupied projector ``V diag(occ) V^T`` of symmetric ``ht``."""
    w, v = jnp.linalg.eigh(ht)
    return w, (v * occ) @ v.T


@_spectrum.defjvp
def _spectrum_jvp(primals, tangents):
    ht, occ = primals
    dht, _ = tangents  # occupations are piecewise constant
    w, q = _spectrum(ht, occ)  # through this rule again under higher-order transforms
    v = jnp.linalg.eigh(ht)[1]
    dw = jnp.einsum("pi,pq,qi->i", v, dht, v)
    return (w, q), (dw, _projector_derivative(ht, occ, dht))


@jax.custom_jvp
def _projector_derivative(ht, occ, b):
    """``d/dt Q(ht + t b)`` at ``t = 0``, ``= V (-(g + g^T) * V^T b V) V^T``."""
    w, v = jnp.linalg.eigh(ht)
    g = _occupied_virtual_inverse_gaps(w, occ)
    return v @ (-(g + g.T) * (v.T @ b @ v)) @ v.T


@_projector_derivative.defjvp
def _projector_derivative_jvp(primals, tangents):
    """Second derivative of Q from second divided differences of the occupations.

    For a step occupation function with a gap, the divided difference
    ``f[w_i, w_j, w_k]`` is zero unless the three orbitals are not all occupied or all
    virtual, and then a product of two ``g`` entries; summed over ``j`` this gives
    ``T(B, C)`` below (``B, C`` in the eigenbasis), and
    ``d^2 Q[B, C] = V (T(B, C) + T(C, B)) V^T``.
    """
    ht, occ, b = primals
    dht, _, db = tangents
    w, v = jnp.linalg.eigh(ht)
    g = _occupied_virtual_inverse_gaps(w, occ)
    bt, ct = v.T @ b @ v, v.T @ dht @ v

    def t(x, y):
        gx, gy = g * x, g * y
        return (-gx @ gy.T + gx.T @ gy + g * (gx @ y - x @ gy)
                + g.T * (x @ gy.T - gx.T @ y))

    second = v @ (t(bt, ct) + t(ct, bt)) @ v.T
    return _projector_derivative(ht, occ, b), _projector_derivative(ht, occ, db) + second


def solve(h, s, ao_mask, n_occ, s_threshold: float = S_THRESHOLD) -> Orbitals:
    """Orbital energies and density matrix of one molecule (closed shell).

    Args:
      h: ``[n, n]`` symmetric Hamiltonian / Fock matrix (Eh).
      s: ``[n, n]`` overlap.
      ao_mask: ``[n]`` bool, real AOs (padding False).
      n_occ: number of doubly occupied orbitals (int scalar, may be traced).
      s_threshold: linear-dependence guard (see the module docstring).

    Returns:
      The :class:`Orbitals`.
    """
    n = h.shape[-1]
    assert h.shape == s.shape == (n, n) and ao_mask.shape == (n,)
    x, keep = orthogonalizer(s, ao_mask, s_threshold)
    return _solve_orthogonal(h, x, keep, ao_mask, n_occ, 2.0)


def _solve_orthogonal(h, x, keep, ao_mask, n_occ, electrons_per_orbital: float) -> Orbitals:
    """:func:`solve` given the orthogonaliser ``(x, keep)`` of the overlap; the density has
    ``electrons_per_orbital`` (2 closed shell, 1 one spin) in each of ``n_occ`` orbitals."""
    n = h.shape[-1]
    mask2 = ao_mask[:, None] & ao_mask[None, :]
    ht = _sym(x.T @ jnp.where(mask2, h, 0.0) @ x)  # [n, n]
    shift = jax.lax.stop_gradient(jnp.max(jnp.sum(jnp.abs(ht), axis=-1))) + 1.0
    ht = ht + jnp.diag(jnp.where(keep, 0.0, shift))
    occ = (jnp.arange(n) < n_occ).astype(ht.dtype)
    w, q = _spectrum(ht, occ)
    coeff = x @ jnp.linalg.eigh(jax.lax.stop_gradient(ht))[1]
    return Orbitals(mo_energy=w, density=electrons_per_orbital * x @ q @ x.T, mo_coeff=coeff,
                    n_orbitals=jnp.sum(keep))


def solve_spins(h, s, ao_mask, n_spin, s_threshold: float = S_THRESHOLD) -> Orbitals:
    """Orbital energies and density matrices of each spin of one molecule (open shell).

    Both spins share the overlap, hence the orthogonaliser and the dropped directions.

    Args:
      h: ``[2, n, n]`` symmetric alpha and beta Hamiltonians / Fock matrices (Eh).
      s: ``[n, n]`` overlap.
      ao_mask: ``[n]`` bool, real AOs (padding False).
      n_spin: ``[2]`` int, occupied orbitals of each spin ``(n_alpha, n_beta)`` (may be
        traced).
      s_threshold: linear-dependence guard (see the module docstring).

    Returns:
      :class:`Orbitals` with a leading spin axis: ``mo_energy [2, n]``, ``density
      [2, n, n]`` (``P_s = C_s,occ C_s,occ^T``; the total density is their sum),
      ``mo_coeff [2, n, n]``, and the scalar ``n_orbitals`` (the same for both spins).
    """
    n = h.shape[-1]
    assert h.shape == (2, n, n) and s.shape == (n, n) and ao_mask.shape == (n,)
    x, keep = orthogonalizer(s, ao_mask, s_threshold)
    orb = jax.vmap(lambda hs, ns: _solve_orthogonal(hs, x, keep, ao_mask, ns, 1.0))(
        h, jnp.asarray(n_spin))
    return orb._replace(n_orbitals=jnp.sum(keep))


def dipole(density, ao_dipole, nuclear_dipole):
    """``mu = nuclear_dipole - Tr(P r)``, ``[3]`` (au).

    Args:
      density: ``[n, n]`` density matrix.
      ao_dipole: ``[3, n, n]`` AO dipole integrals (bohr) about the origin O.
      nuclear_dipole: ``[3]`` ``sum_A Z_A (R_A - O)`` (au).
    """
    return nuclear_dipole - jnp.einsum("kij,ji->k", ao_dipole, density)


def homo_lumo_gap(mo_energy, n_occ):
    """``e_LUMO - e_HOMO`` (Eh) of ascending orbital energies ``[n]``."""
    return mo_energy[n_occ] - mo_energy[n_occ - 1]


def homo_lumo_gap_spins(mo_energy, n_spin, n_available):
    """Open-shell ``e_LUMO - e_HOMO`` (Eh) of per-spin orbital energies ``[2, n]``.

    The HOMO is the highest occupied orbital of either spin (of the spins with ``n_s > 0``),
    the LUMO the lowest virtual of either spin (of those with ``n_s < n_available``); for
    identical spins this is :func:`homo_lumo_gap`. ``0`` if no spin has an occupied or none
    a virtual orbital (mask those molecules: :func:`has_homo_lumo_spins`).

    Args:
      mo_energy: ``[2, n]`` ascending orbital energies of each spin.
      n_spin: ``[2]`` int, occupied orbitals of each spin.
      n_available: how many leading orbital energies of each row are real (int scalar).
    """
    n = mo_energy.shape[-1]
    n_spin = jnp.asarray(n_spin)
    rows = jnp.arange(2)
    homo_s = mo_energy[rows, jnp.clip(n_spin - 1, 0, n - 1)]
    lumo_s = mo_energy[rows, jnp.clip(n_spin, 0, n - 1)]
    has_occ, has_vir = n_spin > 0, n_spin < n_available
    # Finite fill values (never selected when a spin qualifies): no inf, no NaN gradients.
    homo = jnp.max(jnp.where(has_occ, homo_s, jnp.min(jax.lax.stop_gradient(homo_s)) - 1.0))
    lumo = jnp.min(jnp.where(has_vir, lumo_s, jnp.max(jax.lax.stop_gradient(lumo_s)) + 1.0))
    return jnp.where(has_homo_lumo_spins(n_spin, n_available), lumo - homo, 0.0)


def has_homo_lumo_spins(n_spin, n_available):
    """Whether :func:`homo_lumo_gap_spins` is defined: some spin has an occupied orbital and
    some spin a virtual one among the ``n_available``."""
    n_spin = jnp.asarray(n_spin)
    return jnp.any(n_spin > 0) & jnp.any(n_spin < n_available)


def properties(h, s, ao_dipole, ao_mask, n_occ, nuclear_dipole, with_polarizability=True,
               s_threshold: float = S_THRESHOLD) -> dict[str, jax.Array]:
    """Orbitals, dipole and (optionally) polarisability of one molecule in one pass.

    Args:
      h, s, ao_mask, n_occ, s_threshold: as in :func:`solve`.
      ao_dipole: ``[3, n, n]`` AO dipole integrals (bohr).
      nuclear_dipole: ``[3]`` (au), same origin as ``ao_dipole``.
      with_polarizability: also ``alpha [3, 3] = d mu / d E`` (forward-mode, 3 directions).

    Returns:
      ``{"mo_energy" [n], "density" [n, n], "n_orbitals" [], "dipole" [3],
      "polarizability" [3, 3] (if asked)}``.
    """
    return _properties(lambda field: solve(h + field, s, ao_mask, n_occ, s_threshold),
                       ao_dipole, ao_mask, nuclear_dipole, with_polarizability, h.dtype,
                       lambda d: d)


def properties_spins(h, s, ao_dipole, ao_mask, n_spin, nuclear_dipole,
                     with_polarizability=True, s_threshold: float = S_THRESHOLD
                     ) -> dict[str, jax.Array]:
    """:func:`properties` of an open shell: alpha and beta H, the total density's dipole.

    Args:
      h: ``[2, n, n]`` alpha and beta Hamiltonians (Eh).
      s, ao_mask, s_threshold: as in :func:`solve_spins`.
      ao_dipole: ``[3, n, n]`` AO dipole integrals (bohr).
      n_spin: ``[2]`` int, ``(n_alpha, n_beta)`` occupied orbitals of each spin.
      nuclear_dipole: ``[3]`` (au), same origin as ``ao_dipole``.
      with_polarizability: also ``alpha [3, 3] = d mu / d E``, the field added to both
        spins' H (the sum of the two spins' responses).

    Returns:
      ``{"mo_energy" [2, n], "density" [2, n, n] (per spin), "n_orbitals" [], "dipole" [3],
      "polarizability" [3, 3] (if asked)}``; dipole and polarisability are those of the
      total density ``P_alpha + P_beta``.
    """
    return _properties(
        lambda field: solve_spins(h + field, s, ao_mask, n_spin, s_threshold),
        ao_dipole, ao_mask, nuclear_dipole, with_polarizability, h.dtype,
        lambda d: jnp.sum(d, axis=0))


def _properties(solve_with_field, ao_dipole, ao_mask, nuclear_dipole, with_polarizability,
                dtype, total_density):
    """Shared body of :func:`properties` and :func:`properties_spins`.

    ``solve_with_field(v)`` solves with the AO matrix ``v [n, n]`` added to H (each spin's),
    ``total_density`` maps the solution's density to the total ``[n, n]`` one.
    """
    ao_dipole = jnp.where(ao_mask[:, None] & ao_mask[None, :], ao_dipole, 0.0)

    def mu(field):  # [3] -> [3]
        orb = solve_with_field(jnp.einsum("k,kij->ij", field, ao_dipole))
        return dipole(total_density(orb.density), ao_dipole, nuclear_dipole), orb

    zero = jnp.zeros(3, dtype)
    out = {}
    if with_polarizability:
        out["polarizability"], orb = jax.jacfwd(mu, has_aux=True)(zero)
    else:
        orb = mu(zero)[1]
    out.update(mo_energy=orb.mo_energy, density=orb.density, n_orbitals=orb.n_orbitals,
               dipole=dipole(total_density(orb.density), ao_dipole, nuclear_dipole))
    return out
