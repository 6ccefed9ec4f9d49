"""ASE calculator: a checkpoint's energy head drives ``ase.md`` and ``ase.optimize``.

    from ase.md.verlet import VelocityVerlet
    from helm_jax.ase_calculator import HELMCalculator
    from helm_jax.predict import Predictor

    atoms.calc = HELMCalculator(Predictor.from_checkpoint("workdirs/energy_finetune"))
    VelocityVerlet(atoms, timestep=0.5 * ase.units.fs).run(100)

Energies are total energies (eV: the model's prediction plus the per-element reference);
forces are ``-dE/dR`` (eV/A) by automatic differentiation of the same energy, so NVE
dynamics conserve the model's total energy up to the integrator's error. Molecules only
(no periodic boundary conditions).
"""

from __future__ import annotations

from ase.calculators.calculator import Calculator, all_changes

from helm_jax.predict import Predictor


class HELMCalculator(Calculator):
    """Energy and forces of a :class:`helm_jax.predict.Predictor`.

    Args:
      predictor: the model (its checkpoint should have trained the energy head).
      **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, predictor: Predictor, **kwargs):
        super().__init__(**kwargs)
        self.predictor = predictor

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Fills ``self.results`` with ``energy``, ``free_energy`` (eV) and ``forces`` (eV/A)."""
        super().calculate(atoms, properties, system_changes)
        energy, forces = self.predictor.energy_and_forces(self.atoms)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
