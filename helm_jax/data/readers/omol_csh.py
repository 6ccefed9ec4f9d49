"""OMol_CSH_58k HDF5 files (wB97M-V/def2-TZVPD + ECP, packed Fock in the ``omol_csh`` order)."""

from __future__ import annotations

import json

import numpy as np

from helm_jax.data import geometry, h5format
from helm_jax.data.readers.base import Reader, require_file
from helm_jax.data.records import Record


class OmolCshReader(Reader):
    """OMol_CSH_58k HDF5 files: one group per molecule, packed Fock in the ``omol_csh`` order.

    The group list comes from ``<file>.keys.json`` when it is the reference implementation's
    plain JSON list (its order defines the indices); otherwise ``H5Dataset`` lists the groups
    and caches them in that file. The ``spin`` attr of OMol files is the multiplicity 2S+1
    (OMol25 convention); it is told from 2S by electron-count parity.
    """

    kind = "omol_csh"
    convention = "omol_csh"

    def __init__(self, path: str, basis: str = "def2-tzvpd", ecp: str | None = "def2-tzvpd"):
        ds = h5format.H5Dataset(require_file(path))
        if ds.is_native:
            raise ValueError(f"{path} is a project helm_jax.h5 file; use kind='h5'")
        super().__init__(path, basis, ecp)
        self._ds = ds
        self._keys = _list_sidecar(path + h5format.SIDECAR_SUFFIX) or ds.keys

    def _read(self, i: int) -> Record:
        r = self._ds.read(self._keys[i])
        core = sum(geometry.ecp_core_electrons(int(z), self.basis, self.ecp or "")
                   for z in r.elements)
        n_electrons = int(np.sum(r.elements)) - core - r.charge
        spin = r.spin if (r.spin - n_electrons) % 2 == 0 else r.spin - 1
        return self._record(key=r.key, elements=r.elements, coords=r.coords, fock=r.fock,
                            charge=r.charge, spin=spin)


def _list_sidecar(path: str) -> list[str] | None:
    try:
        with open(path) as fh:
            cached = json.load(fh)
    except (OSError, ValueError):
        return None
    return [str(k) for k in cached] if isinstance(cached, list) else None
