"""Evaluation of predicted Hamiltonians on a dataset split (docs/using_a_checkpoint.md).

    summary = evaluate_checkpoint("workdirs/omol_pretrain", split="test", out="eval/")

Per molecule: H MAE over the full matrix and its diagonal / off-diagonal blocks, orbital
energies (occupied MAE, HOMO, LUMO, gap) and the coefficient similarity psi with the
reference overlap, the PySCF energy of the predicted density (non-self-consistent), and the
SCF cycles from the predicted density versus PySCF's minao start. Per element pair: the
pooled H MAE. Outputs: ``metrics.json`` (summary), ``molecules.csv`` (one row per
molecule), ``h_parity.png``, ``h_mae_pairs.png``, ``orbital_errors.png``.
Units: H in 1e-6 Eh (``_ueh``), energies in meV, psi in percent.

Open shells (records with spin-resolved labels, ``Record.fock_beta``; predictions
``[2, n_ao, n_ao]`` alpha, beta; docs/using_a_checkpoint.md "Open shells"): the row's common
columns pool both spins (open-shell HOMO / LUMO over both spins), and per-spin columns
(``*_alpha_*``, ``*_beta_*``), ``<S^2>`` of the predicted and reference densities and the
UKS/UHF energy and SCF runs are added; the summary adds their means over the open-shell
molecules. Closed-shell rows are unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from helm_jax import checkpoint as ckpt_lib
from helm_jax import losses as losses_lib
from helm_jax import hamiltonian_metrics as metrics_lib
from helm_jax import pyscf_metrics, units
from helm_jax.data import datasets, labelling, pipeline
from helm_jax.data import splits as splits_lib
from helm_jax.model import assemble
from helm_jax.data.readers import formula
from helm_jax.data.records import Record
from helm_jax.predict import Predictor

UEH = metrics_lib.MICRO
MEV = pyscf_metrics.MEV
PARITY_SAMPLES = 5000  # H entries per molecule kept for the parity plot


@dataclasses.dataclass
class Report:
    """Per-molecule rows and the pooled data behind the plots.

    Attributes:
      rows: one dict per molecule (see :func:`molecule_row`).
      pairs: element pair -> ``[sum |error| (Eh), entries]`` over all molecules.
      parity: ``(ref, pred)`` sampled H entries (Eh).
      eps: per molecule ``(eps_ref, eps_pred)`` of the occupied orbitals and the LUMO (Eh);
        open shells add one per spin.
    """

    rows: list[dict] = dataclasses.field(default_factory=list)
    pairs: dict[str, list] = dataclasses.field(default_factory=dict)
    parity: tuple[list, list] = dataclasses.field(default_factory=lambda: ([], []))
    eps: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)


class Evaluator:
    """Evaluation of a split during training: losses, and the field's metrics on full
    matrices (the numbers ``experiments/evaluate.py`` reports for H).

    With quantum-chemistry labels it also reports ``losses_lib.QM_METRICS`` (orbital-energy,
    gap, dipole and polarisability errors of the predicted H). Open-shell molecules (of a
    spin-resolved model, or with unrestricted labels) add the per-spin H MAE
    (``h_mae_alpha``, ``h_mae_beta``, ... averaged over those molecules).
    """

    def __init__(self, model, data: datasets.Data, config, ctx, weights, need, dtype,
                 graph_mesh=None, partitioner: str = "bisect"):
        """``graph_mesh``: a ``('data', 'graph')`` mesh with data axis 1 to split each
        evaluation batch over its graph devices with ``partitioner`` (graph parallelism);
        None: one device."""
        self.model, self.data, self.ctx = model, data, ctx
        self.weights, self.need = weights, need | {"energy"}
        modules = tuple(config.loss_modules)
        self.loss_fns = {name: losses_lib.resolve(name, modules) for name in weights}
        if data.spec.qm_targets:
            self.need = self.need | {"qm", "polarizability"}
            self.loss_fns.update({name: losses_lib.resolve(name)
                                  for name in losses_lib.QM_METRICS})
        self.periodic = data.spec.periodic
        if self.periodic:  # no full matrices: the H MAE over labelled blocks, band errors
            self.need = self.need | {"hamiltonian"}
            metrics = ("hamiltonian_mae",) + (losses_lib.BAND_METRICS if data.spec.bands
                                              else ())
            if data.spec.bands:
                self.need = self.need | {"bands"}
            self.loss_fns.update({name: losses_lib.resolve(name) for name in metrics})
        batch_cfg = datasets.batch_config(config.data)
        if not batch_cfg.budgets:  # one set of shapes for every split: compiled once
            every = np.unique(np.concatenate([v for v in data.splits.values()]))
            plan = pipeline.BatchIterator(data.graphs, every, batch_cfg, prefetch=0)
            batch_cfg = dataclasses.replace(batch_cfg,
                                            budgets=[b.to_dict() for b in plan.budgets])
        self.batch_cfg = batch_cfg
        self.dtype = dtype
        self.max_molecules = config.train.max_eval_molecules

        self._combines = {}

        def loss_sums(out, batch):
            sums = {}
            for name, fn in self.loss_fns.items():
                partial = fn(out, batch, ctx)
                self._combines[name] = partial.combine  # closes over nothing traced
                sums[name] = partial.sums
            return sums

        def apply(params, batch):
            out = losses_lib.model_outputs(model, params, batch, self.need, ctx)
            return out, loss_sums(out, batch)
        self._apply = jax.jit(apply)
        if graph_mesh is not None:  # outputs from the parts, in the batch's row order
            from helm_jax import graph_parallel  # pylint: disable=import-outside-toplevel
            parts = graph_parallel.GraphParallelModel(model, graph_mesh, self.need,
                                                      partitioner)
            sums_fn = jax.jit(loss_sums)

            def apply_parts(params, batch):
                out = parts(params, [jax.device_get(batch)])[0]
                return out, sums_fn(out, batch)
            self._apply = apply_parts

    def __call__(self, params, split: str) -> dict[str, float]:
        """Metrics of ``split`` (H MAE in Eh, energies in Eh, forces in Eh/A; see keys)."""
        idx = self.data.splits[split]
        if self.max_molecules:
            idx = idx[: int(self.max_molecules)]
        if len(idx) == 0:
            return {}
        it = pipeline.BatchIterator(self.data.graphs, idx, self.batch_cfg, n_devices=1,
                                    shuffle=False, stats=self.data.stats, dtype=self.dtype,
                                    prefetch=0)
        totals: dict[str, dict[str, float]] = {}
        rows, node_layout, edge_layout = [], self.ctx.node_layout, self.ctx.edge_layout
        reader, template = self.data.reader, self.data.template
        for bucket, per_dev in it.plan(0):
            batch = jax.tree.map(lambda x: x[0], it.make_batch(bucket, per_dev))
            out, sums = self._apply(params, batch)
            for name, s in sums.items():
                acc = totals.setdefault(name, {})
                for k, v in s.items():
                    acc[k] = acc.get(k, 0.0) + float(v)
            out = jax.device_get(out)
            full = "hamiltonian" in self.need and not self.periodic
            fulls = (assemble.batch_to_full(out, batch, node_layout, edge_layout,
                                            self.data.stats)
                     if full else [None] * len(per_dev[0]))
            # A spin-resolved model: beta H too, used for open shells and unrestricted labels.
            betas = (assemble.batch_to_full(out, batch, node_layout, edge_layout,
                                            self.data.stats, spin="beta")
                     if full and "node_h_beta" in out else None)
            n0 = 0
            for k, i in enumerate(per_dev[0]):
                rec = reader[i]
                row = {}
                if fulls[k] is not None and rec.fock is not None:
                    pred_h = fulls[k]
                    if betas is not None and (rec.unrestricted or int(rec.spin) != 0):
                        pred_h = np.stack([fulls[k], betas[k]])
                    pred_h, ref_h = spin_matrices(rec, pred_h)
                    row.update(metrics_lib.hamiltonian_errors(
                        pred_h, ref_h, rec.elements, template.basis, template.ecp or None))
                if rec.energy is not None:
                    row["energy_ae"] = abs(float(out["energy"][k])
                                           - float(batch.globals["energy"][k]))
                n = len(rec.elements)
                if "forces" in out and rec.forces is not None:
                    row["forces_ae"] = float(np.abs(out["forces"][n0:n0 + n]
                                                    - rec.forces).mean())
                n0 += n
                rows.append(row)
        result = metrics_lib.mean_of(rows, sorted({k for r in rows for k in r}))
        val_loss = 0.0
        for name, acc in totals.items():
            value = float(self._combines[name]({k: jnp.asarray(v) for k, v in acc.items()}))
            if name not in self.weights:  # a metric
                result[name] = value
                continue
            result[f"loss_{name}"] = value
            val_loss += self.weights[name] * value
        result["loss"] = val_loss
        return result


def is_open_shell(record: Record, pred_h: np.ndarray) -> bool:
    """Whether a molecule is evaluated spin-resolved: unrestricted labels
    (``record.fock_beta``) or an ``[2, n_ao, n_ao]`` (alpha, beta) prediction."""
    return record.unrestricted or np.ndim(pred_h) == 3


def spin_matrices(record: Record, pred_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, ref)`` H of one molecule in matching shapes.

    Restricted labels and an ``[n_ao, n_ao]`` prediction: unchanged. Otherwise both
    ``[2, n_ao, n_ao]`` (alpha, beta): the reference ``[fock, fock_beta]`` (``[fock, fock]``
    for restricted labels), a spin-free ``[n_ao, n_ao]`` prediction used for both spins.
    """
    pred_h = np.asarray(pred_h)
    if not is_open_shell(record, pred_h):
        return pred_h, record.fock
    ref = np.stack([record.fock, record.fock if record.fock_beta is None else record.fock_beta])
    if pred_h.ndim == 2:
        pred_h = np.stack([pred_h, pred_h])
    if pred_h.shape != ref.shape:
        raise ValueError(f"{record.key}: predicted H {pred_h.shape} and the spin-resolved "
                         f"reference {ref.shape} differ in size.")
    return pred_h, ref


def molecule_row(record: Record, pred_h: np.ndarray, level: labelling.LevelOfTheory,
                 energy: bool = True, scf: bool = True) -> tuple[dict, dict]:
    """Metrics of one molecule.

    Args:
      record: reference record (``fock`` and, preferably, ``overlap``; PySCF order; for an
        open shell also ``fock_beta``, ``charge`` and ``spin``).
      pred_h: ``[n_ao, n_ao]`` predicted H, or ``[2, n_ao, n_ao]`` (alpha, beta) for an
        open shell (a spin-free ``[n_ao, n_ao]`` one is used for both spins).
      level: PySCF level of theory of the labels (basis and ECP of the matrices).
      energy: compute the PySCF energy of the predicted density.
      scf: run the two SCFs (predicted-density start and minao start).

    Returns:
      ``(row, extras)``: the CSV row in output units, and ``extras`` with ``pairs`` and
      the orbital energies ``eps_ref``, ``eps_pred`` (open shells: the list ``eps`` of
      ``(eps_ref, eps_pred)`` per spin instead, see :func:`open_shell_row`).
    """
    if is_open_shell(record, pred_h):
        return open_shell_row(record, pred_h, level, energy=energy, scf=scf)
    ecp = level.ecp or None
    mol = pyscf_metrics.record_mole(record, level) if (energy or scf or record.overlap is None) \
        else None
    s = record.overlap if record.overlap is not None else mol.intor_symmetric("int1e_ovlp")
    nocc = pyscf_metrics.n_occupied(record, level.basis, ecp)
    h = metrics_lib.hamiltonian_errors(pred_h, record.fock, record.elements, level.basis, ecp)
    orb = pyscf_metrics.orbital_errors(pred_h, record.fock, s, nocc)
    row = {"key": record.key, "formula": formula(record.elements),
           "n_atoms": record.n_atoms, "n_ao": len(s),
           **{f"{k}_ueh": v * UEH for k, v in h.items()},
           **{f"{k}_meV": orb[k] * MEV for k in ("eps_occ_mae", "homo_err", "lumo_err",
                                                 "gap_err")},
           "psi_pct": orb["psi"]}
    if energy:
        e = pyscf_metrics.density_energy_error(mol, level, pred_h, record.fock, s, nocc)
        row["energy_err_meV"] = e["energy_err"] * MEV
        if record.energy is not None:  # checks that `level` is the labels' level
            row["ref_density_vs_label_meV"] = (e["e_ref"] - record.energy) * MEV
    if scf:
        dm0 = pyscf_metrics.density_matrix(pyscf_metrics.orbitals(pred_h, s)[1], nocc)
        r = pyscf_metrics.scf_acceleration(mol, level, dm0)
        row.update({k: r[k] for k in ("scf_cycles_pred", "scf_cycles_minao",
                                      "scf_converged", "scf_same_energy")})
        row["scf_energy_diff_ueh"] = r["scf_energy_diff"] * UEH
    extras = {"pairs": metrics_lib.element_pair_errors(pred_h, record.fock, record.elements,
                                                       level.basis, ecp),
              "eps_ref": orb["eps_ref"], "eps_pred": orb["eps_pred"]}
    return row, extras


def open_shell_row(record: Record, pred_h: np.ndarray, level: labelling.LevelOfTheory,
                   energy: bool = True, scf: bool = True) -> tuple[dict, dict]:
    """Spin-resolved metrics of one molecule (unrestricted labels and/or prediction).

    Columns (units as in :func:`molecule_row`): ``key``, ``formula``, ``n_atoms``, ``n_ao``,
    ``charge``, ``spin`` (2S), ``n_alpha``, ``n_beta``; over both spins ``h_mae_ueh``,
    ``h_mae_diag_ueh``, ``h_mae_offdiag_ueh``, ``eps_occ_mae_meV`` (all occupied spin
    orbitals), ``homo_err_meV``, ``lumo_err_meV``, ``gap_err_meV`` (open-shell HOMO: highest
    occupied orbital of either spin; LUMO: lowest virtual of either spin), ``psi_pct``; per
    spin ``x`` in ``alpha``, ``beta``: ``h_mae_x_ueh``, ``h_mae_diag_x_ueh``,
    ``h_mae_offdiag_x_ueh``, ``eps_occ_mae_x_meV``, ``homo_err_x_meV``, ``lumo_err_x_meV``,
    ``gap_err_x_meV``, ``psi_x_pct`` (:func:`helm_jax.pyscf_metrics.spin_orbital_errors`);
    ``spin_split_mae_ueh`` (MAE of the spin splitting ``F_alpha - F_beta``, predicted
    against reference) next to ``spin_split_ref_ueh`` (its mean size ``|F_alpha - F_beta|``:
    predicting no splitting at all errs by this much);
    ``s2_pred``, ``s2_ref`` (``<S^2>`` of the predicted and reference H's densities,
    :func:`helm_jax.pyscf_metrics.spin_square`) and ``s2_err = s2_pred - s2_ref``; with
    ``energy`` the UKS/UHF ``energy_err_meV`` (and ``ref_density_vs_label_meV``), with
    ``scf`` the UKS/UHF runs from the predicted spin densities and from minao
    (``scf_cycles_pred``, ``scf_cycles_minao``, ``scf_converged``, ``scf_same_energy``,
    ``scf_energy_diff_ueh``).

    Returns:
      ``(row, extras)``: ``extras`` holds ``pairs`` (both spins pooled) and ``eps``, one
      ``(eps_ref, eps_pred)`` per spin (occupied orbitals and that spin's LUMO).
    """
    ecp = level.ecp or None
    pred_h, ref_h = spin_matrices(record, pred_h)
    mol = pyscf_metrics.record_mole(record, level) if (energy or scf or record.overlap is None) \
        else None
    s = record.overlap if record.overlap is not None else mol.intor_symmetric("int1e_ovlp")
    nocc = pyscf_metrics.n_occupied_spin(record, level.basis, ecp)
    h = metrics_lib.hamiltonian_errors(pred_h, ref_h, record.elements, level.basis, ecp)
    orb = pyscf_metrics.spin_orbital_errors(pred_h, ref_h, s, nocc)
    orbital_keys = ("eps_occ_mae", "homo_err", "lumo_err", "gap_err")
    row = {"key": record.key, "formula": formula(record.elements),
           "n_atoms": record.n_atoms, "n_ao": len(s), "charge": int(record.charge),
           "spin": int(record.spin), "n_alpha": nocc[0], "n_beta": nocc[1],
           **{f"{k}_ueh": h[k] * UEH for k in ("h_mae", "h_mae_diag", "h_mae_offdiag")},
           **{f"{k}_meV": orb[k] * MEV for k in orbital_keys},
           "psi_pct": orb["psi"]}
    for spin in pyscf_metrics.SPINS:
        row.update({f"{k}_{spin}_ueh": h[f"{k}_{spin}"] * UEH
                    for k in ("h_mae", "h_mae_diag", "h_mae_offdiag")})
        row.update({f"{k}_{spin}_meV": orb[f"{k}_{spin}"] * MEV for k in orbital_keys})
        row[f"psi_{spin}_pct"] = orb[f"psi_{spin}"]
    split_ref = ref_h[0] - ref_h[1]
    row["spin_split_mae_ueh"] = float(np.abs(pred_h[0] - pred_h[1] - split_ref).mean()) * UEH
    row["spin_split_ref_ueh"] = float(np.abs(split_ref).mean()) * UEH
    dm_pred = pyscf_metrics.spin_density(pred_h, s, nocc)
    row["s2_pred"] = pyscf_metrics.spin_square(dm_pred, s)
    row["s2_ref"] = pyscf_metrics.spin_square(pyscf_metrics.spin_density(ref_h, s, nocc), s)
    row["s2_err"] = row["s2_pred"] - row["s2_ref"]
    if energy:
        e = pyscf_metrics.density_energy_error(mol, level, pred_h, ref_h, s, nocc)
        row["energy_err_meV"] = e["energy_err"] * MEV
        if record.energy is not None:  # checks that `level` is the labels' level
            row["ref_density_vs_label_meV"] = (e["e_ref"] - record.energy) * MEV
    if scf:
        r = pyscf_metrics.scf_acceleration(mol, level, dm_pred)
        row.update({k: r[k] for k in ("scf_cycles_pred", "scf_cycles_minao",
                                      "scf_converged", "scf_same_energy")})
        row["scf_energy_diff_ueh"] = r["scf_energy_diff"] * UEH
    extras = {"pairs": metrics_lib.element_pair_errors(pred_h, ref_h, record.elements,
                                                       level.basis, ecp),
              "eps": [(orb[f"eps_ref_{spin}"], orb[f"eps_pred_{spin}"])
                      for spin in pyscf_metrics.SPINS]}
    return row, extras


def evaluate_predictions(items: Iterable[tuple[Record, np.ndarray]],
                         level: labelling.LevelOfTheory, energy: bool = True,
                         scf: bool = True, seed: int = 0, progress: bool = False) -> Report:
    """Runs :func:`molecule_row` over ``(record, predicted H)`` pairs and pools the results.

    ``items`` may be a generator (predictions are consumed one molecule at a time).
    Predictions are ``[n_ao, n_ao]``, or ``[2, n_ao, n_ao]`` (alpha, beta) for open shells
    (rows of :func:`open_shell_row`; both spins enter the parity samples, the element pairs
    and the orbital-energy plot).
    """
    report, rng = Report(), np.random.default_rng(seed)
    for record, pred_h in tqdm.tqdm(items, unit="mol", disable=not progress, file=sys.stderr):
        row, extras = molecule_row(record, pred_h, level, energy=energy, scf=scf)
        report.rows.append(row)
        for name, (total, n) in extras["pairs"].items():
            acc = report.pairs.setdefault(name, [0.0, 0])
            acc[0] += total
            acc[1] += n
        if "eps" in extras:  # open shell: both spins
            pred_s, ref_s = spin_matrices(record, pred_h)
            report.eps.extend(extras["eps"])
        else:
            pred_s, ref_s = [pred_h], [record.fock]
            report.eps.append((extras["eps_ref"], extras["eps_pred"]))
        for pred_x, ref_x in zip(pred_s, ref_s):
            iu = np.triu_indices(len(pred_x))
            pick = rng.choice(len(iu[0]), min(PARITY_SAMPLES, len(iu[0])), replace=False)
            report.parity[0].extend(ref_x[iu][pick])
            report.parity[1].extend(pred_x[iu][pick])
    return report


def summarize(report: Report) -> dict:
    """Means over molecules (MAE of the signed errors) and pooled per-pair MAE."""
    rows = report.rows
    out: dict = {"n_molecules": len(rows)}
    if not rows:
        return out
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    mae = lambda k: float(np.mean([abs(r[k]) for r in rows]))
    for k in ("h_mae_ueh", "h_mae_diag_ueh", "h_mae_offdiag_ueh", "eps_occ_mae_meV", "psi_pct"):
        out[k] = mean(k)
    for k in ("homo", "lumo", "gap"):
        out[f"{k}_mae_meV"] = mae(f"{k}_err_meV")
    if "energy_err_meV" in rows[0]:
        out["energy_mae_meV"] = mae("energy_err_meV")
        out["energy_within_30meV_pct"] = 100.0 * float(np.mean(
            [abs(r["energy_err_meV"]) <= 30.0 for r in rows]))
    if "ref_density_vs_label_meV" in rows[0]:
        out["ref_density_vs_label_max_meV"] = max(abs(r["ref_density_vs_label_meV"])
                                                  for r in rows)
    if "scf_cycles_pred" in rows[0]:
        pred, minao = mean("scf_cycles_pred"), mean("scf_cycles_minao")
        out.update(scf_cycles_pred=pred, scf_cycles_minao=minao,
                   scf_cycles_ratio=pred / minao, scf_cycles_saved_pct=100 * (1 - pred / minao),
                   scf_same_energy_pct=100.0 * mean("scf_same_energy"))
    out.update(summarize_open_shells(rows))
    out["element_pairs"] = {name: {"mae_ueh": total / n * UEH, "n_entries": n}
                            for name, (total, n) in sorted(report.pairs.items())}
    return out


def _finite_mean(values) -> float:
    """Mean of the finite values (NaN if none: e.g. no beta electron in any molecule)."""
    values = np.asarray([float(v) for v in values])
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def summarize_open_shells(rows: list[dict]) -> dict:
    """Means over the open-shell rows (:func:`open_shell_row`); empty without any.

    Keys: ``n_open_shell``; per spin ``x`` in ``alpha``, ``beta``: ``h_mae_x_ueh``,
    ``h_mae_diag_x_ueh``, ``h_mae_offdiag_x_ueh``, ``eps_occ_mae_x_meV``,
    ``homo_x_mae_meV``, ``lumo_x_mae_meV``, ``gap_x_mae_meV``, ``psi_x_pct``; the open-shell
    HOMO / LUMO / gap (either spin) ``open_shell_homo_mae_meV``, ``open_shell_lumo_mae_meV``,
    ``open_shell_gap_mae_meV``; ``spin_split_mae_ueh``, ``spin_split_ref_ueh``;
    ``s2_pred``, ``s2_ref`` (mean ``<S^2>``) and ``s2_mae``
    (mean ``|s2_pred - s2_ref|``); with energies ``open_shell_energy_mae_meV``, with SCF runs
    ``open_shell_scf_cycles_pred``, ``open_shell_scf_cycles_minao`` and
    ``open_shell_scf_same_energy_pct``. Per-spin quantities a molecule lacks (e.g. the beta
    HOMO of a one-electron molecule) are left out of their means.
    """
    rows = [r for r in rows if "s2_pred" in r]
    if not rows:
        return {}
    mean = lambda k: _finite_mean(r[k] for r in rows)
    mae = lambda k: _finite_mean(abs(r[k]) for r in rows)
    out: dict = {"n_open_shell": len(rows)}
    for spin in pyscf_metrics.SPINS:
        for k in ("h_mae", "h_mae_diag", "h_mae_offdiag"):
            out[f"{k}_{spin}_ueh"] = mean(f"{k}_{spin}_ueh")
        out[f"eps_occ_mae_{spin}_meV"] = mean(f"eps_occ_mae_{spin}_meV")
        for k in ("homo", "lumo", "gap"):
            out[f"{k}_{spin}_mae_meV"] = mae(f"{k}_err_{spin}_meV")
        out[f"psi_{spin}_pct"] = mean(f"psi_{spin}_pct")
    for k in ("homo", "lumo", "gap"):
        out[f"open_shell_{k}_mae_meV"] = mae(f"{k}_err_meV")
    out.update(spin_split_mae_ueh=mean("spin_split_mae_ueh"),
               spin_split_ref_ueh=mean("spin_split_ref_ueh"))
    out.update(s2_pred=mean("s2_pred"), s2_ref=mean("s2_ref"), s2_mae=mae("s2_err"))
    if "energy_err_meV" in rows[0]:
        out["open_shell_energy_mae_meV"] = mae("energy_err_meV")
    if "scf_cycles_pred" in rows[0]:
        out.update(open_shell_scf_cycles_pred=mean("scf_cycles_pred"),
                   open_shell_scf_cycles_minao=mean("scf_cycles_minao"),
                   open_shell_scf_same_energy_pct=100.0 * mean("scf_same_energy"))
    return out


# --------------------------------------------------------------------------------------
# From a checkpoint.
# --------------------------------------------------------------------------------------


def split_indices(config: ml_collections.ConfigDict, reader, split: str,
                  checkpoint: str | None = None) -> np.ndarray:
    """Indices of ``split`` (train/val/test, or all converged records).

    With ``checkpoint``, the run's ``<workdir>/splits.json`` (the workdir found from the
    checkpoint path by :func:`helm_jax.data.splits.workdir_of_checkpoint`; FileNotFoundError
    naming the path when it is missing); without, recomputed exactly as
    :func:`helm_jax.data.datasets.load_data` does (same seed and sizes).
    """
    if split == "all":
        return reader.converged_indices()
    if checkpoint:
        splits = splits_lib.load_for_checkpoint(checkpoint)
    else:
        splits = splits_lib.from_config(config.data, reader)
    if split not in splits:
        raise ValueError(f"Unknown split {split!r}: choose one of {sorted(splits)} or 'all'.")
    return splits[split]


def _predictions(predictor: Predictor, reader, indices: np.ndarray, chunk: int
                 ) -> Iterator[tuple[Record, np.ndarray]]:
    for start in range(0, len(indices), chunk):
        records = [reader[int(i)] for i in indices[start:start + chunk]]
        yield from zip(records, predictor.predict_hamiltonian(records))


def evaluate_checkpoint(checkpoint: str, split: str = "test", data: str | None = None,
                        out: str | None = None, which: str = "best", energy: bool = True,
                        scf: bool = True, max_molecules: int | None = None,
                        progress: bool = True, **level_overrides) -> dict:
    """Evaluates a checkpoint on a split of its dataset (or of ``data``).

    Args:
      checkpoint: workdir or checkpoint directory.
      split: ``train``, ``val``, ``test`` or ``all``.
      data: another dataset file (split with the checkpoint's split settings); None: the
        checkpoint's ``config.data``.
      out: output folder for ``metrics.json``, ``molecules.csv`` and the plots (None: none).
      which: ``best`` or ``latest`` checkpoint of a workdir.
      energy, scf: compute the PySCF energy / SCF-acceleration metrics.
      max_molecules: evaluate only the first molecules of the split.
      progress: show a progress bar.
      **level_overrides: LevelOfTheory fields (method, grid_level, density_fit, conv_tol,
        ...) replacing the dataset file's.

    Returns:
      The summary (:func:`summarize`) with ``checkpoint``, ``step``, ``split``, ``data``
      and ``level_of_theory``.
    """
    loaded = ckpt_lib.load_model(checkpoint, which=which)
    data_cfg = loaded.config.data if data is None else ml_collections.ConfigDict(
        {**loaded.config.data.to_dict(), "path": data, "kind": None})
    reader = datasets.open_reader(data_cfg)
    level = pyscf_metrics.reader_level_of_theory(reader, **level_overrides)
    template = loaded.template
    if (level.basis, level.ecp or "") != (template.basis.lower(), (template.ecp or "").lower()):
        raise ValueError(f"{reader.path} is in {level.basis!r}/{level.ecp!r} but the checkpoint "
                         f"predicts {template.basis!r}/{template.ecp!r}.")
    indices = split_indices(loaded.config, reader, split,
                            checkpoint if data is None else None)[:max_molecules]
    predictor = Predictor(loaded)
    report = evaluate_predictions(
        _predictions(predictor, reader, indices, 4 * predictor.max_molecules), level,
        energy=energy, scf=scf, progress=progress)
    summary = {"checkpoint": os.path.abspath(checkpoint), "step": loaded.step, "split": split,
               "data": reader.path, "level_of_theory": dataclasses.asdict(level),
               **summarize(report)}
    if out:
        write_outputs(report, summary, out)
    return summary


# --------------------------------------------------------------------------------------
# Outputs.
# --------------------------------------------------------------------------------------


def write_outputs(report: Report, summary: dict, out: str) -> list[str]:
    """Writes ``metrics.json``, ``molecules.csv`` and the plots; returns their paths."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "metrics.json"), os.path.join(out, "molecules.csv")]
    with open(paths[0], "w") as f:
        json.dump(summary, f, indent=1)
    if report.rows:
        # Open-shell rows add columns: the union, in order of appearance (blank where absent).
        fields = list(dict.fromkeys(k for row in report.rows for k in row))
        with open(paths[1], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(report.rows)
    return paths + plot(report, summary, out)


def plot(report: Report, summary: dict, out: str) -> list[str]:
    """H parity, H MAE by element pair, and orbital-energy errors as PNGs in ``out``.

    Bare ``matplotlib.figure.Figure`` objects: no pyplot state, no backend switch.
    """
    from matplotlib.figure import Figure

    paths = []

    def new_axes(figsize):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots()

    def save(fig, name):
        fig.tight_layout()
        paths.append(os.path.join(out, name))
        fig.savefig(paths[-1], dpi=110)

    ref, pred = (np.asarray(x) for x in report.parity)
    fig, ax = new_axes((5, 5))
    if ref.size:
        lim = [min(ref.min(), pred.min()), max(ref.max(), pred.max())]
        ax.plot(lim, lim, "k-", lw=0.5)
    ax.scatter(ref, pred, s=2, alpha=0.4)
    ax.set(xlabel="reference H entry (Eh)", ylabel="predicted H entry (Eh)",
           title=f"H MAE {summary.get('h_mae_ueh', float('nan')):.1f} uEh")
    save(fig, "h_parity.png")

    pairs = sorted(summary.get("element_pairs", {}).items(), key=lambda kv: -kv[1]["mae_ueh"])
    fig, ax = new_axes((max(5, 0.3 * len(pairs)), 4))
    ax.bar([k for k, _ in pairs], [v["mae_ueh"] for _, v in pairs])
    ax.set(ylabel="H MAE (uEh)", yscale="log",
           title="H MAE by element pair\n(one symbol: on-site blocks)")
    ax.tick_params(axis="x", rotation=90)
    save(fig, "h_mae_pairs.png")

    fig, ax = new_axes((6, 4))
    for k, (e_ref, e_pred) in enumerate(report.eps):
        err = (e_pred - e_ref) * MEV
        ax.scatter(e_ref[:-1] * units.HARTREE_EV, err[:-1], s=6, c="C0",
                   label="occupied" if k == 0 else None)
        ax.scatter(e_ref[-1:] * units.HARTREE_EV, err[-1:], s=12, c="C3", marker="x",
                   label="LUMO" if k == 0 else None)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set(xlabel="reference orbital energy (eV)", ylabel="predicted - reference (meV)",
           title=f"occupied MAE {summary.get('eps_occ_mae_meV', float('nan')):.1f} meV")
    if report.eps:
        ax.legend()
    save(fig, "orbital_errors.png")
    return paths


SUMMARY_ROWS = (
    ("H MAE", "h_mae_ueh", "1e-6 Eh"), ("H MAE diagonal blocks", "h_mae_diag_ueh", "1e-6 Eh"),
    ("H MAE off-diagonal blocks", "h_mae_offdiag_ueh", "1e-6 Eh"),
    ("occupied orbital energy MAE", "eps_occ_mae_meV", "meV"),
    ("HOMO MAE", "homo_mae_meV", "meV"), ("LUMO MAE", "lumo_mae_meV", "meV"),
    ("gap MAE", "gap_mae_meV", "meV"), ("psi (orbital similarity)", "psi_pct", "%"),
    ("energy of predicted density MAE", "energy_mae_meV", "meV"),
    ("molecules within 30 meV", "energy_within_30meV_pct", "%"),
    ("SCF cycles from prediction", "scf_cycles_pred", "cycles"),
    ("SCF cycles from minao", "scf_cycles_minao", "cycles"),
    ("SCF cycles saved", "scf_cycles_saved_pct", "%"),
    ("SCF runs reaching the same energy", "scf_same_energy_pct", "%"),
)


#: The open-shell rows of :func:`format_summary` (means over the open-shell molecules).
OPEN_SHELL_ROWS = tuple(
    row for spin in ("alpha", "beta") for row in (
        (f"H MAE {spin}", f"h_mae_{spin}_ueh", "1e-6 Eh"),
        (f"H MAE {spin} diagonal blocks", f"h_mae_diag_{spin}_ueh", "1e-6 Eh"),
        (f"H MAE {spin} off-diagonal blocks", f"h_mae_offdiag_{spin}_ueh", "1e-6 Eh"),
        (f"occupied {spin} orbital energy MAE", f"eps_occ_mae_{spin}_meV", "meV"),
        (f"HOMO {spin} MAE", f"homo_{spin}_mae_meV", "meV"),
        (f"LUMO {spin} MAE", f"lumo_{spin}_mae_meV", "meV"),
        (f"gap {spin} MAE", f"gap_{spin}_mae_meV", "meV"),
        (f"psi {spin}", f"psi_{spin}_pct", "%"))) + (
    ("HOMO MAE (either spin)", "open_shell_homo_mae_meV", "meV"),
    ("LUMO MAE (either spin)", "open_shell_lumo_mae_meV", "meV"),
    ("gap MAE (either spin)", "open_shell_gap_mae_meV", "meV"),
    ("spin splitting F_alpha - F_beta MAE", "spin_split_mae_ueh", "1e-6 Eh"),
    ("spin splitting |F_alpha - F_beta| (reference)", "spin_split_ref_ueh", "1e-6 Eh"),
    ("<S^2> of predicted density", "s2_pred", ""),
    ("<S^2> of reference density", "s2_ref", ""),
    ("<S^2> MAE", "s2_mae", ""),
    ("energy of predicted density MAE", "open_shell_energy_mae_meV", "meV"),
    ("SCF cycles from prediction", "open_shell_scf_cycles_pred", "cycles"),
    ("SCF cycles from minao", "open_shell_scf_cycles_minao", "cycles"),
    ("SCF runs reaching the same energy", "open_shell_scf_same_energy_pct", "%"),
)


def format_summary(summary: dict) -> str:
    """A plain-text table of the summary's headline metrics.

    With open-shell molecules, a second table of their per-spin means
    (:data:`OPEN_SHELL_ROWS`) follows.
    """
    lines = [f"{summary.get('split', '')} split: {summary['n_molecules']} molecules, "
             f"step {summary.get('step', '?')}", f"{'metric':<36} {'value':>12}  unit"]
    lines += [f"{name:<36} {summary[key]:>12.3f}  {unit}"
              for name, key, unit in SUMMARY_ROWS if key in summary]
    if summary.get("n_open_shell"):
        lines += [f"open shells (spin-resolved): {summary['n_open_shell']} molecules",
                  f"{'metric':<36} {'value':>12}  unit"]
        lines += [f"{name:<36} {summary[key]:>12.3f}  {unit}".rstrip()
                  for name, key, unit in OPEN_SHELL_ROWS if key in summary]
    return "\n".join(lines)
