"""The project's own HDF5 files (``helm_jax.h5/v1``, written by :mod:`helm_jax.data.h5format`)."""

from __future__ import annotations

import functools

import numpy as np

from helm_jax import basis as basis_lib
from helm_jax.data import geometry, h5format
from helm_jax.data.readers.base import Reader, require_file
from helm_jax.data.records import DataError, Record


class ProjectH5Reader(Reader):
    """The project's own HDF5 files (``helm_jax.h5/v1``), streamed through ``H5Dataset``.

    Spin-resolved (unrestricted) labels, groups with a ``fock_beta`` dataset, read with
    ``Record.fock_beta`` set (the beta Fock matrix; ``fock`` is the alpha one); restricted
    labels read with ``fock_beta=None``. ``attrs["unrestricted"]`` is True when the labeller
    was asked for UKS/UHF for every structure (``--unrestricted``).

    Every problem with a record (a corrupt group, a stored checksum that differs from the data,
    a wrong dtype or shape, a failed validation) raises :class:`DataError`.

    Periodic files (file attr ``periodic``, written by helm_jax/data/labelling_pbc.py) hold
    real-space blocks H_ij(T) that a molecular Record cannot represent: they are refused
    unless ``periodic=True``, which yields Records with ``cell``, ``pbc`` and ``periodic``
    (docs/periodic.md). Structures labelled with ``--band_path`` carry PySCF's band
    reference along a high-symmetry path in ``periodic.path_kpts`` ``[K, 3]`` (fractional)
    and ``periodic.path_bands`` ``[K, nao]`` (Eh); other files read them as None.

    Args:
      path: the file.
      verify: compare each structure's stored checksums with its data (files written before
        checksums existed read unverified).
      periodic: read a periodic file (required for one; refused for a molecular file).
    """

    kind = "h5"

    def __init__(self, path: str, verify: bool = True, periodic: bool = False):
        ds = h5format.H5Dataset(require_file(path), verify=verify)
        if not ds.is_native:
            raise DataError(f"{path} has no format={h5format.FORMAT!r} attr: it is not a "
                             "project file (an OMol_CSH file? use kind='omol_csh')")
        is_periodic = bool(ds.attrs.get(h5format.PERIODIC_ATTR, False))
        if is_periodic and not periodic:
            raise DataError(
                f"{path} holds periodic structures (cell, k-mesh, real-space blocks H_ij(T)): a "
                "molecular Record (one [N, N] Fock matrix) cannot represent them. Open it with "
                "open_dataset(path, periodic=True) for periodic Records (docs/periodic.md).")
        if periodic and not is_periodic:
            raise DataError(f"{path} is a molecular file: open it without periodic=True")
        self.periodic = periodic
        super().__init__(path, str(ds.attrs["basis"]), str(ds.attrs.get("ecp", "")))
        # Every stored matrix is checked against its molecule's AO count in the file's basis,
        # so a wrong-size matrix is reported under its own name.
        ds.expected_nao = functools.partial(basis_lib.molecule_n_ao, basis=self.basis,
                                            ecp=self.ecp)  # picklable
        self._ds = ds
        self._keys = ds.keys

    @property
    def attrs(self) -> dict:
        """The file attrs (level of theory, ``unrestricted`` when forced, versions, ...)."""
        return self._ds.attrs

    def converged_indices(self) -> np.ndarray:
        """int64 ``[m]`` indices of the structures stored with ``converged=True``."""
        return self._ds.converged_indices()

    def _read(self, i: int) -> Record:
        r = self._ds.read(self._keys[i])
        where = f"{self.path} [{r.key}]"
        if r.periodic is None:
            if self.periodic:
                raise DataError(f"{where}: a molecular structure in a periodic file")
            return self._molecular(r)
        if not self.periodic:
            raise DataError(f"{where}: a periodic structure (cell, real-space blocks); a "
                            "molecular Record cannot represent it: open the file with "
                            "periodic=True")
        try:
            geometry.check_periodic(r.elements, r.coords, r.cell, r.pbc, where)
            geometry.check_periodic_labels(r.elements, r.periodic, self.basis, "", where)
            bands = r.periodic.path_bands
            if bands is not None and not np.all(np.isfinite(bands[:, 0])):
                raise ValueError(f"{where}: path_bands has a k-point without bands (NaN in "
                                 "its lowest band); the group is damaged: relabel it")
        except ValueError as err:
            raise DataError(str(err)) from err
        return r

    def _molecular(self, r: Record) -> Record:
        is_ao = {k: k.startswith(h5format.AO_PREFIX) for k in r.extras}
        try:
            return self._validated(r, is_ao)
        except DataError:
            raise
        except ValueError as err:  # validation of a record the file holds: unusable data
            raise DataError(str(err)) from err

    def _validated(self, r: Record, is_ao: dict[str, bool]) -> Record:
        return self._record(key=r.key, elements=r.elements, coords=r.coords, fock=r.fock,
                            fock_beta=r.fock_beta, overlap=r.overlap, energy=r.energy,
                            forces=r.forces,
                            charge=r.charge, spin=r.spin, converged=r.converged,
                            ao_extras={k: v for k, v in r.extras.items() if is_ao[k]},
                            extras={k: v for k, v in r.extras.items() if not is_ao[k]})
