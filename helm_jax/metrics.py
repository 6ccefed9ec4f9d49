"""Field-standard metrics (DESIGN.md section 5), per molecule, on full matrices.

* H MAE: mean ``|H_pred - H_ref|`` over all entries of the full matrix, per molecule, and
  over the atom-diagonal and off-diagonal blocks; reported in 1e-6 Eh (micro-Hartree).
* Energies in meV, forces in meV/A.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from helm_jax import basis as basis_lib

HARTREE_EV = 27.211386245988
MICRO = 1e6


def diagonal_block_mask(elements: Sequence[int], basis: str, ecp: str | None) -> np.ndarray:
    """bool ``[n_ao, n_ao]``: entries whose two AOs sit on the same atom."""
    slices = basis_lib.molecule_ao_slices(elements, basis, ecp)
    atom = np.concatenate([np.full(s.stop - s.start, i) for i, s in enumerate(slices)])
    return atom[:, None] == atom[None, :]


def hamiltonian_errors(pred: np.ndarray, ref: np.ndarray, elements: Sequence[int],
                       basis: str, ecp: str | None) -> dict[str, float]:
    """Per-molecule H MAE (Eh) over the full matrix, diagonal and off-diagonal blocks."""
    if pred.shape != ref.shape:
        raise ValueError(f"Predicted H {pred.shape} and reference {ref.shape} differ in size.")
    err = np.abs(pred - ref)
    diag = diagonal_block_mask(elements, basis, ecp)
    off = err[~diag]
    return {"h_mae": float(err.mean()), "h_mae_diag": float(err[diag].mean()),
            "h_mae_offdiag": float(off.mean()) if off.size else 0.0}


def mean_of(rows: Iterable[dict], keys: Sequence[str] | None = None) -> dict[str, float]:
    """Mean over molecules of each metric (NaN-free keys only)."""
    rows = list(rows)
    if not rows:
        return {}
    keys = keys or [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
