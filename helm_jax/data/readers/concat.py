"""Several datasets of one basis read as one (e.g. the embedded closed-shell set plus its
open-shell and charged species).

    reader = ConcatReader([open_dataset("a.h5"), open_dataset("b.h5")])
    reader[len(first)]        # the first record of b.h5, key "1:<its key in b.h5>"

Records keep their contents; their keys are prefixed with the part's index so they stay
unique. Converged indices, coordinates and pickling follow the parts.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Sequence

import numpy as np

from helm_jax.data.readers.base import Reader
from helm_jax.data.records import Record


class ConcatReader(Reader):
    """The records of ``parts`` in order, behind one :class:`Reader`.

    Raises:
      ValueError: no parts, or parts in different bases / ECPs (one model template
        needs one basis).
    """

    kind = "concat"

    def __init__(self, parts: Sequence[Reader]):  # pylint: disable=super-init-not-called
        parts = list(parts)
        if not parts:
            raise ValueError("ConcatReader needs at least one dataset")
        bases = {(p.basis, p.ecp) for p in parts}
        if len(bases) != 1:
            raise ValueError(
                "the datasets to concatenate are in different bases: "
                + ", ".join(f"{p.path}: {p.basis} + ECP {p.ecp}" for p in parts)
                + ". Label them in one basis (data_prep/label.py --basis=...).")
        self.parts = parts
        self.path = "+".join(p.path for p in parts)
        self.basis, self.ecp = parts[0].basis, parts[0].ecp
        self._offsets = np.cumsum([0] + [len(p) for p in parts])
        self._keys = [f"{k}:{key}" for k, p in enumerate(parts) for key in p.keys]
        self._handle_obj, self._pid = None, None

    def _locate(self, i: int) -> tuple[Reader, int]:
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.parts[k], i - int(self._offsets[k])

    def _read(self, i: int) -> Record:
        part, j = self._locate(i)
        return dataclasses.replace(part[j], key=self._keys[i])

    def coords(self, i: int) -> np.ndarray:
        """Coordinates of record i (cheap where the part offers it)."""
        i = operator.index(i)
        part, j = self._locate(i)
        return np.asarray(part.coords(j) if hasattr(part, "coords") else part[j].coords)

    def converged_indices(self) -> np.ndarray:
        return np.concatenate([p.converged_indices() + off
                               for p, off in zip(self.parts, self._offsets[:-1])]).astype(np.int64)
