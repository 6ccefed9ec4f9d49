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

Closed shells only (``nocc = n_electrons / 2``), like the labels.
"""

from __future__ import annotations

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


def n_occupied(record: Record, basis: str, ecp: str | None) -> int:
    """Doubly occupied orbitals of a closed-shell record (ECP cores excluded).

    The record's geometry was validated when it was read; only its electrons are counted.
    """
    n_electrons, spin = geometry.electron_count(
        geometry.to_atomic_numbers(record.elements), record.charge, record.spin, basis=basis,
        ecp=ecp or "")
    if spin != 0:
        raise ValueError(f"{record.key}: open-shell structure (2S={spin}); orbital metrics "
                         "and SCF guesses are defined for closed shells only.")
    return n_electrons // 2


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


def _python(value):
    return value.item() if isinstance(value, np.generic) else value


def record_mole(record: Record, level: labelling.LevelOfTheory):
    """The built PySCF ``Mole`` of a record at ``level`` (Angstrom, spherical AOs)."""
    structure = geometry.Structure(elements=np.asarray(record.elements, np.int32),
                                   coords=np.asarray(record.coords, np.float64),
                                   charge=int(record.charge), spin=int(record.spin),
                                   source=record.key)
    return geometry.build_mole(structure, level.basis, level.ecp)


def density_energy_error(mol, level: labelling.LevelOfTheory, pred_h: np.ndarray,
                         ref_h: np.ndarray, s: np.ndarray, nocc: int) -> dict[str, float]:
    """Non-self-consistent PySCF total energies of the predicted and reference densities.

    Returns:
      ``e_pred``, ``e_ref`` (Eh, ``mf.energy_tot`` of each H's density with one ``mf``)
      and ``energy_err = e_pred - e_ref`` (Eh).
    """
    mf = labelling.make_scf(mol, level)
    e_pred = float(mf.energy_tot(density_matrix(orbitals(pred_h, s)[1], nocc)))
    e_ref = float(mf.energy_tot(density_matrix(orbitals(ref_h, s)[1], nocc)))
    return {"e_pred": e_pred, "e_ref": e_ref, "energy_err": e_pred - e_ref}


def scf_acceleration(mol, level: labelling.LevelOfTheory, dm0: np.ndarray,
                     max_cycle: int = 100) -> dict[str, Any]:
    """PySCF SCF started from ``dm0`` versus the default (minao) start.

    Each run uses a fresh mean-field object (a reused one would restart from its previous
    orbitals).

    Returns:
      ``scf_cycles_pred``, ``scf_cycles_minao``, ``scf_converged`` (both runs),
      ``scf_energy_diff`` (Eh, guess run minus minao run) and ``scf_same_energy``
      (``|diff| < 1e-6`` Eh and both converged).
    """
    guess = labelling.make_scf(mol, level, max_cycle)
    e_guess = guess.kernel(dm0=dm0)
    minao = labelling.make_scf(mol, level, max_cycle)
    e_minao = minao.kernel()
    converged = bool(guess.converged and minao.converged)
    diff = float(e_guess - e_minao)
    return {"scf_cycles_pred": int(guess.cycles), "scf_cycles_minao": int(minao.cycles),
            "scf_converged": converged, "scf_energy_diff": diff,
            "scf_same_energy": converged and abs(diff) < SAME_ENERGY_TOL}
