"""SchNOrb MD17 ASE SQLite dbs (water, ethanol, malondialdehyde, uracil): ORCA PBE/def2-SVP."""

from __future__ import annotations

import base64
import contextlib

import numpy as np

from helm_jax.data.readers.base import Reader, formula, sqlite_readonly
from helm_jax.data.records import Record
from helm_jax.units import BOHR_ANGSTROM

FORCE_UNITS = {"hartree/angstrom": 1.0, "hartree/bohr": 1.0 / BOHR_ANGSTROM}


class SchNOrbReader(Reader):
    """SchNOrb MD17 ASE SQLite dbs (water, ethanol, malondialdehyde, uracil): ORCA PBE/def2-SVP.

    ``row.positions`` are Angstrom, ``row.data['hamiltonian' | 'overlap']`` Eh in ORCA order.
    Units of energy and forces, from SchNOrb's own parser (atomistic-machine-learning/SchNOrb,
    ``src/schnorb/data.py``): the energy is ORCA's ``FINAL SINGLE POINT ENERGY`` (Eh), minus an
    optional ``energy_offset`` and minus the dataset mean (``extract_data.py`` ``sub_mean``),
    both kept in the db metadata; the forces are ORCA's ``CARTESIAN GRADIENT`` (Eh/bohr) times
    ``-1/Bohr`` with ``ase.units.Bohr`` = 0.529 A, i.e. already Eh/Angstrom. Hence the
    defaults below; ``force_unit="hartree/bohr"`` is there for files made another way
    (check with PySCF forces on one frame when unsure).

    Args:
      path: the ``.db`` file.
      basis: PySCF basis of the matrices.
      force_unit: unit of the stored forces, a key of :data:`FORCE_UNITS`.
      absolute_energy: add the metadata's ``mean_energy`` and ``energy_offset`` back, so
        energies are total energies in Eh (False keeps the stored, mean-removed values).
    """

    kind = "schnorb"
    convention = "orca"

    def __init__(self, path: str, basis: str = "def2-svp",
                 force_unit: str = "hartree/angstrom", absolute_energy: bool = True):
        super().__init__(path, basis)
        if force_unit not in FORCE_UNITS:
            raise ValueError(f"force_unit {force_unit!r} is not one of {sorted(FORCE_UNITS)}")
        self._force_factor = FORCE_UNITS[force_unit]
        with contextlib.closing(sqlite_readonly(self.path)) as conn:
            self._ids = [r[0] for r in conn.execute("SELECT id FROM systems ORDER BY id")]
        self._keys = [str(i) for i in self._ids]
        meta = self._handle().metadata if absolute_energy else {}
        self._energy_shift = float(meta.get("mean_energy", 0.0)) + float(
            meta.get("energy_offset", 0.0))

    def _open(self):
        import ase.db  # pylint: disable=import-outside-toplevel

        return ase.db.connect(self.path, type="db")

    def _read(self, i: int) -> Record:
        row = self._handle().get(id=self._ids[i])
        data = row.data
        energy = _data_array(data, "energy")
        forces = _data_array(data, "forces")
        return self._record(
            key=self._keys[i], elements=row.numbers, coords=row.positions,
            fock=_data_array(data, "hamiltonian"), overlap=_data_array(data, "overlap"),
            energy=None if energy is None else float(energy.reshape(-1)[0]) + self._energy_shift,
            forces=None if forces is None else forces * self._force_factor)

    def published_splits(self, seed: int = 0) -> dict[str, np.ndarray]:
        """SchNOrb's split sizes: water 500/500/rest, the others 25,000/500/rest.

        The published indices are not distributed, so the split is drawn with ``seed``.
        """
        sizes = (500, 500, None) if formula(self[0].elements) == "H2O" else (25000, 500, None)
        return self.splits(seed, sizes)


def _data_array(data, name: str) -> np.ndarray | None:
    """A float64 array from ``row.data``; SchNetPack >= 0.3 stores base64 plus shape/dtype."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raw = base64.b64decode(value)
        return np.frombuffer(raw, dtype=data[f"_dtype_{name}"]).reshape(
            data[f"_shape_{name}"]).astype(np.float64)
    return np.asarray(value, dtype=np.float64)

