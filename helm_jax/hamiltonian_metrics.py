"""Field-standard metrics (docs/using_a_checkpoint.md), per molecule, on full matrices.

* H MAE: mean ``|H_pred - H_ref|`` over all entries of the full matrix, per molecule, and
  over the atom-diagonal and off-diagonal blocks; reported in 1e-6 Eh (micro-Hartree).
* Energies in meV, forces in meV/A.
* Open shells (spin-resolved labels, docs/using_a_checkpoint.md "Open shells"): H is
  ``[2, n_ao, n_ao]`` (alpha, beta); the H MAE pools both spins and is also reported per
  spin (``h_mae_alpha``, ``h_mae_beta``, ...), the per-pair sums pool both spins.
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
    ``"H-O"`` (lighter element first) for blocks between two different atoms. Spin-resolved
    ``[2, n_ao, n_ao]`` ``pred`` and ``ref`` pool both spins (twice the entries).
    """
    _check_shapes(pred, ref)
    atom = ao_atoms(elements, basis, ecp)
    z = np.asarray(elements)[atom]
    lo, hi = np.minimum.outer(z, z), np.maximum.outer(z, z)
    code = (lo * 1000 + hi) * 2 + (atom[:, None] == atom[None, :])
    codes, inverse = np.unique(code.ravel(), return_inverse=True)
    err = np.abs(pred - ref).reshape(-1, *code.shape)  # [n_spins, n_ao, n_ao]
    sums = np.bincount(inverse, weights=err.sum(axis=0).ravel())
    counts = np.bincount(inverse) * len(err)
    out = {}
    for c, s, n in zip(codes, sums, counts):
        pair, same = divmod(int(c), 2)
        a, b = divmod(pair, 1000)
        name = basis_lib.symbol(a) if same else f"{basis_lib.symbol(a)}-{basis_lib.symbol(b)}"
        out[name] = (float(s), int(n))
    return out


def _check_shapes(pred: np.ndarray, ref: np.ndarray) -> None:
    if np.shape(pred) != np.shape(ref) or np.ndim(ref) not in (2, 3) or (
            np.ndim(ref) == 3 and len(ref) != 2):
        raise ValueError(f"Predicted H {np.shape(pred)} and reference {np.shape(ref)} differ "
                         "in size (or are neither [n_ao, n_ao] nor [2, n_ao, n_ao]).")


def _block_errors(err: np.ndarray, diag: np.ndarray) -> tuple[float, float, float]:
    """MAE over ``[..., n, n]`` errors: all, the diagonal blocks, the off-diagonal blocks."""
    off = err[..., ~diag]
    return (float(err.mean()), float(err[..., diag].mean()),
            float(off.mean()) if off.size else 0.0)


def hamiltonian_errors(pred: np.ndarray, ref: np.ndarray, elements: Sequence[int],
                       basis: str, ecp: str | None) -> dict[str, float]:
    """Per-molecule H MAE (Eh) over the full matrix, diagonal and off-diagonal blocks.

    ``[n_ao, n_ao]`` H: ``h_mae``, ``h_mae_diag``, ``h_mae_offdiag``. Spin-resolved
    ``[2, n_ao, n_ao]`` (alpha, beta) H: the same keys over both spins' entries, and
    ``h_mae_alpha``, ``h_mae_diag_alpha``, ``h_mae_offdiag_alpha`` and the ``_beta`` ones.
    """
    _check_shapes(pred, ref)
    err = np.abs(pred - ref)
    diag = diagonal_block_mask(elements, basis, ecp)
    keys = ("h_mae", "h_mae_diag", "h_mae_offdiag")
    out = dict(zip(keys, _block_errors(err, diag)))
    if err.ndim == 3:
        for name, e in zip(("alpha", "beta"), err):
            out.update({f"{k}_{name}": v for k, v in zip(keys, _block_errors(e, diag))})
    return out


def mean_of(rows: Iterable[dict], keys: Sequence[str] | None = None) -> dict[str, float]:
    """Mean over molecules of each metric (NaN-free keys only)."""
    rows = list(rows)
    if not rows:
        return {}
    keys = keys or [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
