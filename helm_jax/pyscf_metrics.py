"""Quantum-chemistry metrics of a predicted H (docs/using_a_checkpoint.md), numpy + PySCF.

All functions take full AO matrices in PySCF order and the REFERENCE overlap ``S``:

* Orbitals of the generalised eigenproblem ``H C = S C e`` (:func:`orbitals`, which is
  :func:`helm_jax.orbitals.orbitals_numpy`): canonical orthogonalisation with the overlap
  eigen-directions at or below :data:`helm_jax.orbitals.S_THRESHOLD` dropped, as in training.
* Occupied orbital-energy MAE, HOMO, LUMO and gap errors, and the orbital-coefficient
  similarity ``psi``: the mean over occupied orbitals ``i`` of
  ``|C_pred[:, i] . C_ref[:, i]| / (|C_pred[:, i]| |C_ref[:, i]|)`` in percent
  (:func:`orbital_errors`).
* PySCF energies of the density ``P = 2 C_occ C_occ^T`` of the predicted H, evaluated
  non-self-consistently with ``mf.energy_tot(P)`` and compared with the same functional of
  the reference H's density (:func:`density_energy_error`).
* SCF acceleration: PySCF SCF cycles from the predicted density versus PySCF's default
  (minao) start, and whether both reach the same energy (:func:`scf_acceleration`).

Closed shells (restricted labels): ``nocc = n_electrons / 2`` doubly occupied orbitals
(:func:`n_occupied`). Open shells (spin-resolved, unrestricted labels; docs/using_a_checkpoint.md,
"Open shells"): H is ``[2, n_ao, n_ao]`` (alpha, beta), ``n_alpha`` and ``n_beta`` singly
occupied orbitals per spin (:func:`n_occupied_spin`), the density ``[2, n_ao, n_ao]``
``P_s = C_s,occ C_s,occ^T`` (:func:`spin_density`), per-spin orbital errors
(:func:`spin_orbital_errors`), ``<S^2>`` of the density (:func:`spin_square`), and UKS/UHF
energies and SCF runs (:func:`make_scf`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import h5py
import numpy as np

from helm_jax import orbitals as orbitals_lib
from helm_jax.data import geometry, labelling
from helm_jax.data.records import Record
from helm_jax.units import HARTREE_EV

MEV = HARTREE_EV * 1e3  # meV per Eh
SAME_ENERGY_TOL = 1e-6  # Eh; two SCF runs "converge to the same state"
#: Levels of theory of the public datasets without a level in their files (docs/data.md).
DATASET_LEVELS = {
    "omol_csh": dict(method="wb97m-v", basis="def2-tzvpd", ecp="def2-tzvpd"),
    "schnorb": dict(method="pbe", basis="def2-svp"),
    "nabladft": dict(method="wb97x-d", basis="def2-svp"),
    "qh9": dict(method="b3lyp", basis="def2-svp"),
}


#: ``orbitals(h, s) -> (e [m], c [n_ao, m])``: ``H C = S C e`` on the host, ``m = n_ao - d``
#: for ``d`` dropped (near-)linearly dependent overlap directions; one rule for training,
#: labels and metrics (:mod:`helm_jax.orbitals`).
orbitals = orbitals_lib.orbitals_numpy


def density_matrix(c: np.ndarray, nocc: int) -> np.ndarray:
    """Closed-shell density ``P = 2 C_occ C_occ^T`` ``[n_ao, n_ao]``."""
    occ = c[:, :nocc]
    return 2.0 * occ @ occ.T


def n_occupied_spin(record: Record, basis: str, ecp: str | None) -> tuple[int, int]:
    """``(n_alpha, n_beta)`` occupied orbitals of each spin (ECP cores excluded).

    ``n_alpha = (n_electrons + 2S) / 2`` and ``n_beta = (n_electrons - 2S) / 2`` from the
    record's elements, charge and spin (2S), as PySCF's ``mol.nelec``. The record's geometry
    was validated when it was read; only its electrons are counted (a charge and spin the
    electron count cannot have raise ValueError).
    """
    n_electrons, spin = geometry.electron_count(
        geometry.to_atomic_numbers(record.elements), record.charge, record.spin, basis=basis,
        ecp=ecp or "")
    return (n_electrons + spin) // 2, (n_electrons - spin) // 2


def n_occupied(record: Record, basis: str, ecp: str | None) -> int:
    """Doubly occupied orbitals of a closed-shell record (ECP cores excluded).

    The record's geometry was validated when it was read; only its electrons are counted.
    Open-shell records (2S != 0) raise ValueError: use :func:`n_occupied_spin`.
    """
    n_alpha, n_beta = n_occupied_spin(record, basis, ecp)
    if n_alpha != n_beta:
        raise ValueError(f"{record.key}: open-shell structure (2S={n_alpha - n_beta}); "
                         "closed-shell orbital metrics and SCF guesses need 2S = 0 (use the "
                         "spin-resolved metrics, n_occupied_spin).")
    return n_alpha


def orbital_errors(pred_h: np.ndarray, ref_h: np.ndarray, s: np.ndarray, nocc: int
                   ) -> dict[str, Any]:
    """Orbital-energy errors and coefficient similarity of one molecule.

    Args:
      pred_h, ref_h: ``[n_ao, n_ao]`` predicted and reference H (Eh).
      s: ``[n_ao, n_ao]`` reference overlap.
      nocc: doubly occupied orbitals.

    Returns:
      ``eps_occ_mae`` (Eh), signed ``homo_err``, ``lumo_err``, ``gap_err`` (Eh, pred - ref),
      ``psi`` (%), and the arrays ``eps_pred``, ``eps_ref`` (occupied orbitals and the LUMO).
    """
    e_p, c_p = orbitals(pred_h, s)
    e_r, c_r = orbitals(ref_h, s)
    cos = np.sum(c_p[:, :nocc] * c_r[:, :nocc], axis=0) / (
        np.linalg.norm(c_p[:, :nocc], axis=0) * np.linalg.norm(c_r[:, :nocc], axis=0))
    homo, lumo = nocc - 1, min(nocc, len(e_r) - 1)
    gap_p, gap_r = e_p[lumo] - e_p[homo], e_r[lumo] - e_r[homo]
    return {"eps_occ_mae": float(np.abs(e_p[:nocc] - e_r[:nocc]).mean()),
            "homo_err": float(e_p[homo] - e_r[homo]), "lumo_err": float(e_p[lumo] - e_r[lumo]),
            "gap_err": float(gap_p - gap_r), "psi": float(100.0 * np.abs(cos).mean()),
            "eps_pred": e_p[:lumo + 1], "eps_ref": e_r[:lumo + 1]}


SPINS = ("alpha", "beta")


def spin_density(h: np.ndarray, s: np.ndarray, nocc: tuple[int, int]) -> np.ndarray:
    """Unrestricted density ``[2, n_ao, n_ao]``: ``P_s = C_s,occ C_s,occ^T`` per spin.

    Args:
      h: ``[2, n_ao, n_ao]`` alpha and beta H (Eh).
      s: ``[n_ao, n_ao]`` overlap.
      nocc: ``(n_alpha, n_beta)`` occupied orbitals (lowest of each spin, aufbau).
    """
    occ = [orbitals(h[k], s)[1][:, :int(nocc[k])] for k in range(2)]
    return np.stack([c @ c.T for c in occ])


def spin_square(dm: np.ndarray, s: np.ndarray) -> float:
    """``<S^2>`` of the single determinant with spin densities ``dm = [P_alpha, P_beta]``.

    ``<S^2> = (N_a - N_b)^2 / 4 + (N_a + N_b) / 2 - Tr(P_a S P_b S)`` with
    ``N_s = Tr(P_s S)``: PySCF's ``scf.uhf.spin_square`` (``mf.spin_square()``) written with
    the densities of idempotent ``P_s S P_s = P_s`` (orthonormal occupied orbitals).
    """
    ps_a, ps_b = dm[0] @ s, dm[1] @ s
    n_a, n_b = np.trace(ps_a), np.trace(ps_b)
    return float((n_a - n_b) ** 2 / 4.0 + (n_a + n_b) / 2.0 - np.sum(ps_a * ps_b.T))


def spin_orbital_errors(pred_h: np.ndarray, ref_h: np.ndarray, s: np.ndarray,
                        nocc: tuple[int, int]) -> dict[str, Any]:
    """Per-spin and open-shell orbital errors of one molecule with spin-resolved H.

    Per spin ``x`` in ``alpha``, ``beta`` (``n_x`` occupied orbitals), as
    :func:`orbital_errors`: ``eps_occ_mae_x``, signed ``homo_err_x`` (highest occupied
    orbital of that spin), ``lumo_err_x`` (lowest virtual of that spin), ``gap_err_x`` and
    ``psi_x`` (%); NaN where that spin has no occupied (HOMO, gap, MAE, psi) or no virtual
    (LUMO, gap) orbital. Over both spins: ``eps_occ_mae`` and ``psi`` over all
    ``n_alpha + n_beta`` occupied spin orbitals; ``homo_err`` of the open-shell HOMO (the
    highest occupied orbital of either spin), ``lumo_err`` of the LUMO (the lowest virtual of
    either spin) and ``gap_err = LUMO - HOMO`` errors (Eh, pred - ref; each side takes its
    own highest / lowest, whichever spin it is in).

    Args:
      pred_h, ref_h: ``[2, n_ao, n_ao]`` predicted and reference alpha, beta H (Eh).
      s: ``[n_ao, n_ao]`` reference overlap.
      nocc: ``(n_alpha, n_beta)``.

    Returns:
      The errors above, and per spin the arrays ``eps_pred_x``, ``eps_ref_x`` (occupied
      orbitals and the LUMO of that spin).
    """
    out: dict[str, Any] = {}
    occ_err, cosines = [], []
    homo, lumo = {"pred": [], "ref": []}, {"pred": [], "ref": []}
    nan = float("nan")
    for k, name in enumerate(SPINS):
        n = int(nocc[k])
        e_p, c_p = orbitals(pred_h[k], s)
        e_r, c_r = orbitals(ref_h[k], s)
        cos = np.abs(np.sum(c_p[:, :n] * c_r[:, :n], axis=0) / (
            np.linalg.norm(c_p[:, :n], axis=0) * np.linalg.norm(c_r[:, :n], axis=0)))
        err = np.abs(e_p[:n] - e_r[:n])
        occ_err.append(err)
        cosines.append(cos)
        has_virtual = n < len(e_r)
        h_err = float(e_p[n - 1] - e_r[n - 1]) if n else nan
        l_err = float(e_p[n] - e_r[n]) if has_virtual else nan
        gap = (float((e_p[n] - e_p[n - 1]) - (e_r[n] - e_r[n - 1]))
               if n and has_virtual else nan)
        if n:
            homo["pred"].append(e_p[n - 1])
            homo["ref"].append(e_r[n - 1])
        if has_virtual:
            lumo["pred"].append(e_p[n])
            lumo["ref"].append(e_r[n])
        out.update({f"eps_occ_mae_{name}": float(err.mean()) if n else nan,
                    f"homo_err_{name}": h_err, f"lumo_err_{name}": l_err,
                    f"gap_err_{name}": gap,
                    f"psi_{name}": float(100.0 * cos.mean()) if n else nan,
                    f"eps_pred_{name}": e_p[:n + 1], f"eps_ref_{name}": e_r[:n + 1]})
    occ_err, cosines = np.concatenate(occ_err), np.concatenate(cosines)
    homo_p = max(homo["pred"]) if homo["pred"] else nan
    homo_r = max(homo["ref"]) if homo["ref"] else nan
    lumo_p = min(lumo["pred"]) if lumo["pred"] else nan
    lumo_r = min(lumo["ref"]) if lumo["ref"] else nan
    out.update({"eps_occ_mae": float(occ_err.mean()) if occ_err.size else nan,
                "homo_err": float(homo_p - homo_r), "lumo_err": float(lumo_p - lumo_r),
                "gap_err": float((lumo_p - homo_p) - (lumo_r - homo_r)),
                "psi": float(100.0 * cosines.mean()) if cosines.size else nan})
    return out


# --------------------------------------------------------------------------------------
# PySCF: level of theory, energies of densities, SCF acceleration.
# --------------------------------------------------------------------------------------


def level_of_theory(path: str, kind: str | None = None,
                    **overrides: Any) -> labelling.LevelOfTheory:
    """The PySCF level of theory of a dataset file, with explicit overrides.

    Project HDF5 files record it in their attrs (``method``, ``basis``, ``ecp``,
    ``grid_level``, ``density_fit``, ``conv_tol``); the public datasets use
    :data:`DATASET_LEVELS`.

    Args:
      path: the dataset file.
      kind: its reader kind (``helm_jax.data.readers.KINDS``), None to detect.
      **overrides: LevelOfTheory fields that replace the file's (None values are ignored).

    Returns:
      The :class:`helm_jax.data.labelling.LevelOfTheory`.
    """
    from helm_jax.data import readers  # Local import: the readers pull in sqlite/lmdb.

    kind = kind or readers.detect_kind(path)
    fields = {f: None for f in labelling.LevelOfTheory.__dataclass_fields__}
    if kind == "h5":
        with h5py.File(path, "r") as f:
            fields.update({k: _python(f.attrs[k]) for k in fields if k in f.attrs})
    else:
        fields.update(DATASET_LEVELS.get(kind, {}))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if not fields.get("method") or not fields.get("basis"):
        raise ValueError(f"{path} does not record its level of theory: pass the method "
                         "(xc) and basis explicitly.")
    return labelling.LevelOfTheory(**{k: v for k, v in fields.items() if v is not None})


def reader_level_of_theory(reader, **overrides: Any) -> labelling.LevelOfTheory:
    """:func:`level_of_theory` of an open reader; for a
    :class:`helm_jax.data.readers.ConcatReader`, the one level all its parts share.

    Raises:
      ValueError: the parts were labelled at different levels.
    """
    parts = getattr(reader, "parts", None)
    if parts is None:
        return level_of_theory(reader.path, kind=reader.kind, **overrides)
    levels = [reader_level_of_theory(p, **overrides) for p in parts]
    if any(lv != levels[0] for lv in levels[1:]):
        raise ValueError(f"the datasets of {reader.path} were labelled at different levels "
                         f"({', '.join(str(dataclasses.asdict(lv)) for lv in levels)}): pass "
                         "the level flags (method, grid_level, ...) to evaluate them as one.")
    return levels[0]


def _python(value):
    return value.item() if isinstance(value, np.generic) else value


def record_mole(record: Record, level: labelling.LevelOfTheory):
    """The built PySCF ``Mole`` of a record at ``level`` (Angstrom, spherical AOs) with the
    record's charge and spin (2S)."""
    structure = geometry.Structure(elements=np.asarray(record.elements, np.int32),
                                   coords=np.asarray(record.coords, np.float64),
                                   charge=int(record.charge), spin=int(record.spin),
                                   source=record.key)
    return geometry.build_mole(structure, level.basis, level.ecp)


def make_scf(mol, level: labelling.LevelOfTheory, max_cycle: int = 100,
             unrestricted: bool = False):
    """The labeller's mean-field object (:func:`helm_jax.data.labelling.make_scf`): RKS/RHF,
    or UKS/UHF for spin-resolved labels, with the same settings (xc, grid level, density
    fitting, ``conv_tol``, ``max_cycle``)."""
    return labelling.make_scf(mol, level, max_cycle, unrestricted=bool(unrestricted))


def _density(h: np.ndarray, s: np.ndarray, nocc) -> np.ndarray:
    """Closed-shell ``[n, n]`` density of ``[n, n]`` H, spin densities of ``[2, n, n]`` H."""
    if np.ndim(h) == 3:
        return spin_density(h, s, nocc)
    return density_matrix(orbitals(h, s)[1], nocc)


def density_energy_error(mol, level: labelling.LevelOfTheory, pred_h: np.ndarray,
                         ref_h: np.ndarray, s: np.ndarray, nocc) -> dict[str, float]:
    """Non-self-consistent PySCF total energies of the predicted and reference densities.

    Closed shell: ``[n_ao, n_ao]`` H, ``nocc`` doubly occupied orbitals, RKS/RHF energy.
    Open shell: ``[2, n_ao, n_ao]`` alpha/beta H, ``nocc = (n_alpha, n_beta)``, UKS/UHF
    energy of the spin densities (:func:`spin_density`).

    Returns:
      ``e_pred``, ``e_ref`` (Eh, ``mf.energy_tot`` of each H's density with one ``mf``)
      and ``energy_err = e_pred - e_ref`` (Eh).
    """
    mf = make_scf(mol, level, unrestricted=np.ndim(pred_h) == 3)
    e_pred = float(mf.energy_tot(_density(pred_h, s, nocc)))
    e_ref = float(mf.energy_tot(_density(ref_h, s, nocc)))
    return {"e_pred": e_pred, "e_ref": e_ref, "energy_err": e_pred - e_ref}


def scf_acceleration(mol, level: labelling.LevelOfTheory, dm0: np.ndarray,
                     max_cycle: int = 100) -> dict[str, Any]:
    """PySCF SCF started from ``dm0`` versus the default (minao) start.

    ``dm0`` ``[n_ao, n_ao]``: restricted (RKS/RHF) runs; ``[2, n_ao, n_ao]`` (alpha, beta
    densities, e.g. :func:`spin_density`): unrestricted (UKS/UHF) runs of the Mole's charge
    and spin. Each run uses a fresh mean-field object (a reused one would restart from its
    previous orbitals).

    Returns:
      ``scf_cycles_pred``, ``scf_cycles_minao``, ``scf_converged`` (both runs),
      ``scf_energy_diff`` (Eh, guess run minus minao run) and ``scf_same_energy``
      (``|diff| < 1e-6`` Eh and both converged).
    """
    unrestricted = np.ndim(dm0) == 3
    guess = make_scf(mol, level, max_cycle, unrestricted)
    e_guess = guess.kernel(dm0=dm0)
    minao = make_scf(mol, level, max_cycle, unrestricted)
    e_minao = minao.kernel()
    converged = bool(guess.converged and minao.converged)
    diff = float(e_guess - e_minao)
    return {"scf_cycles_pred": int(guess.cycles), "scf_cycles_minao": int(minao.cycles),
            "scf_converged": converged, "scf_energy_diff": diff,
            "scf_same_energy": converged and abs(diff) < SAME_ENERGY_TOL}
