"""OMol_CSH_58k HDF5 files (wB97M-V/def2-TZVPD + ECP, packed Fock in the ``omol_csh`` order)."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from helm_jax.data import geometry, h5format
from helm_jax.data.readers.base import Reader, require_file
from helm_jax.data.records import DataError, Record

REFERENCE_KEYS_SUFFIX = ".keys.json"  # the reference's JSON list; never written here
OWN_KEYS_SUFFIX = ".helm_jax_keys.json"  # this reader's cache; never written under the above
_OWN_FORMAT = "helm_jax.omol_csh_keys/v1"


class OmolCshReader(Reader):
    """OMol_CSH_58k HDF5 files: one group per molecule, packed Fock in the ``omol_csh`` order.

    Keys, as the HELM reference's loader finds them: the JSON list in ``<file>.keys.json`` when
    present (its order defines the indices; the file is only read), otherwise every group of a
    recursive walk of the file that holds a ``fock`` dataset, keyed by its path (``a/b``), in
    depth-first name order. The walk is cached in ``<file>.helm_jax_keys.json`` (stamped with
    the file's size and mtime); a file of that name this reader did not write is left alone.

    Spin-resolved (unrestricted) groups: a ``fock`` dataset of shape ``[2, N(N+1)/2]`` (row 0
    alpha, row 1 beta, each packed like the restricted one), or ``fock`` plus ``fock_beta``
    ``[N(N+1)/2]`` as in the project's own files, read as ``Record.fock`` (alpha) and
    ``Record.fock_beta`` (beta), both converted from the ``omol_csh`` order. A group with a
    1-D ``fock`` alone is restricted (``fock_beta=None``).

    The ``spin`` attr is read as 2S or as 2S+1, whichever its parity allows for the electron
    count (sum of atomic numbers minus ECP cores minus charge); a value neither fits raises
    :class:`DataError`.
    """

    kind = "omol_csh"
    convention = "omol_csh"

    def __init__(self, path: str, basis: str = "def2-tzvpd", ecp: str | None = "def2-tzvpd"):
        ds = _OmolH5(require_file(path))
        if ds.is_native:
            raise ValueError(f"{path} is a project helm_jax.h5 file; use kind='h5'")
        super().__init__(path, basis, ecp)
        self._ds = ds
        self._keys = ds.keys

    def _read(self, i: int) -> Record:
        key = self._keys[i]
        if key not in self._ds._handle():  # pylint: disable=protected-access
            raise DataError(
                f"{self.path} [{key}]: key {i} of {self._ds.keys_source} is not a group of the "
                "file: the keys list belongs to another file or is stale")
        r = self._ds.read(key)
        core = sum(geometry.ecp_core_electrons(int(z), self.basis, self.ecp or "")
                   for z in r.elements)
        n_electrons = int(np.sum(r.elements)) - core - r.charge
        spin = spin_2s(r.spin, n_electrons, where=f"{self.path} [{key}]")
        return self._record(key=r.key, elements=r.elements, coords=r.coords, fock=r.fock,
                            fock_beta=r.fock_beta, charge=r.charge, spin=spin)


def spin_2s(value: int, n_electrons: int, where: str = "") -> int:
    """2S from an OMol ``spin`` attr given as 2S or as 2S+1 (the multiplicity).

    2S has the parity of the electron count, so the value's parity picks the convention (the
    two conventions always differ in parity); the result must lie in ``[0, n_electrons]``.

    Raises:
      DataError: naming ``where`` and the value when neither convention fits.
    """
    value, n_electrons = int(value), int(n_electrons)
    two_s = value if (value - n_electrons) % 2 == 0 else value - 1
    if not 0 <= two_s <= n_electrons:
        raise DataError(
            f"{where}: spin attr {value} fits neither 2S nor 2S+1 for {n_electrons} electrons "
            "(2S must have the electron count's parity and lie in 0..n_electrons); check the "
            "charge and spin attrs of this group")
    return two_s


class _OmolH5(h5format.H5Dataset):
    """``H5Dataset`` with the reference's key discovery; never writes ``<file>.keys.json``."""

    keys_source = ""

    def _load_index(self, f: h5py.File) -> tuple[list[str], np.ndarray]:
        if self.is_native:
            return [], np.zeros(0, bool)
        listed = self.path + REFERENCE_KEYS_SUFFIX
        keys = _json_list(listed)
        if keys is not None:
            self.keys_source = listed
            return keys, np.ones(len(keys), bool)
        self.keys_source = own = self.path + OWN_KEYS_SUFFIX
        stat = os.stat(self.path)
        stamp = [stat.st_size, stat.st_mtime_ns]
        cached = _json(own)
        ours = isinstance(cached, dict) and cached.get("format") == _OWN_FORMAT
        if ours and cached.get("stamp") == stamp:
            keys = [str(k) for k in cached["keys"]]
            return keys, np.ones(len(keys), bool)
        try:
            keys = _walk(f)
        except OSError as err:
            raise DataError(h5format._corrupt_message(self.path, err)) from err  # pylint: disable=protected-access
        if ours or not os.path.exists(own):  # never overwrite a file this reader did not write
            h5format.write_json_cache(own, {"format": _OWN_FORMAT, "stamp": stamp, "keys": keys})
        return keys, np.ones(len(keys), bool)


def _walk(group: h5py.Group, prefix: str = "") -> list[str]:
    """Paths of every group under ``group`` holding a ``fock`` dataset, depth first by name."""
    keys = []
    for name in group:
        if group.get(name, getclass=True) is not h5py.Group:
            continue  # a dataset (or a dangling link): nothing to walk
        sub = group[name]
        if sub.get("fock", getclass=True) is h5py.Dataset:
            keys.append(prefix + name)
        keys.extend(_walk(sub, f"{prefix}{name}/"))
    return keys


def _json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _json_list(path: str) -> list[str] | None:
    cached = _json(path)
    return [str(k) for k in cached] if isinstance(cached, list) else None
