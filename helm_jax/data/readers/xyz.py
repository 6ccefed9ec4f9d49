"""Extended-xyz files (read with ASE) with energies and forces but no matrices, e.g. rMD17."""

from __future__ import annotations

import numpy as np

from helm_jax.data import geometry
from helm_jax.data.readers.base import Reader
from helm_jax.data.records import Record
from helm_jax.units import HARTREE_EV


class XYZReader(Reader):
    """Extended-xyz frames with energies and forces but no matrices (e.g. rMD17).

    Energies come from the header (``Energy=``/``energy=``), forces from the ``forces``
    columns, both in eV and eV/A as in rMD17 (``energy_unit="hartree"`` if the file is in Eh).
    The basis only sets the model's block template; records carry no Fock matrix, so such
    files serve energy (transfer) runs. The file is parsed once per process.
    """

    kind = "xyz"
    convention = "pyscf"

    def __init__(self, path: str, basis: str = "def2-svp", ecp: str | None = None,
                 energy_unit: str = "ev"):
        if energy_unit not in ("ev", "hartree"):
            raise ValueError(f"energy_unit must be 'ev' or 'hartree', not {energy_unit!r}")
        self._scale = 1.0 / HARTREE_EV if energy_unit == "ev" else 1.0
        super().__init__(path, basis, ecp)
        self._keys = [str(i) for i in range(len(self._handle()))]

    def _open(self):
        return geometry.read_atoms(self.path)

    def _read(self, i: int) -> Record:
        atoms = self._handle()[i]
        info = {k.lower(): v for k, v in atoms.info.items()}
        energy = info.get("energy")
        if energy is None and atoms.calc is not None:
            energy = atoms.calc.results.get("energy")
        forces = atoms.calc.results.get("forces") if atoms.calc is not None else None
        if forces is None and "forces" in atoms.arrays:
            forces = atoms.arrays["forces"]
        return self._record(
            key=str(i), elements=atoms.numbers, coords=atoms.positions, fock=None,
            energy=None if energy is None else float(energy) * self._scale,
            forces=None if forces is None else np.asarray(forces) * self._scale,
            charge=int(info.get("charge", 0)), spin=info.get("spin"))
