"""Field-standard metrics (docs/using_a_checkpoint.md), per molecule, on full matrices.

* H MAE: mean ``|H_pred - H_ref|`` over all entries of the full matrix, per molecule, and
  over the atom-diagonal and off-diagonal blocks; reported in 1e-6 Eh (micro-Hartree).
* Energies in meV, forces in meV/A.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from helm_jax import basis as basis_lib

MICRO = 1e6


def ao_atoms(elements: Sequence[int], basis: str, ecp: str | None) -> np.ndarray:
    """int ``[n_ao]``: the atom of each AO (PySCF order)."""
    slices = basis_lib.molecule_ao_slices(elements, basis, ecp)
    return np.concatenate([np.full(s.stop - s.start, i) for i, s in enumerate(slices)])


def diagonal_block_mask(elements: Sequence[int], basis: str, ecp: str | None) -> np.ndarray:
    """bool ``[n_ao, n_ao]``: entries whose two AOs sit on the same atom."""
    atom = ao_atoms(elements, basis, ecp)
    return atom[:, None] == atom[None, :]


def element_pair_errors(pred: np.ndarray, ref: np.ndarray, elements: Sequence[int],
                        basis: str, ecp: str | None) -> dict[str, tuple[float, int]]:
    """Sum of ``|H_pred - H_ref|`` (Eh) and number of entries per element pair.

    Keys: an element symbol (``"O"``) for the diagonal blocks of its atoms, and
    ``"H-O"`` (lighter element first) for blocks between two different atoms.
    """
    atom = ao_atoms(elements, basis, ecp)
    z = np.asarray(elements)[atom]
    lo, hi = np.minimum.outer(z, z), np.maximum.outer(z, z)
    code = (lo * 1000 + hi) * 2 + (atom[:, None] == atom[None, :])
    codes, inverse = np.unique(code.ravel(), return_inverse=True)
    sums = np.bincount(inverse, weights=np.abs(pred - ref).ravel())
    counts = np.bincount(inverse)
    out = {}
    for c, s, n in zip(codes, sums, counts):
        pair, same = divmod(int(c), 2)
        a, b = divmod(pair, 1000)
        name = basis_lib.symbol(a) if same else f"{basis_lib.symbol(a)}-{basis_lib.symbol(b)}"
        out[name] = (float(s), int(n))
    return out


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
