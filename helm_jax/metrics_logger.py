"""The training log: progress line, TensorBoard events, ``<workdir>/metrics.jsonl`` and
``learning_curve.png``."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from helm_jax import units


class MetricsLogger:
    """Progress line, TensorBoard events, ``metrics.jsonl`` and ``learning_curve.png``.

    ``active=False`` (every process but the first of a multi-process run) keeps the history
    in memory and writes and prints nothing.
    """

    def __init__(self, workdir: str, num_steps: int, start_step: int = 0, active: bool = True):
        self.workdir, self.num_steps, self.active = workdir, num_steps, active
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.history = self._load(start_step)
        self._writer = None
        self._t0, self._s0, self._mols = time.time(), start_step, 0
        # Cumulative over resumes: each row carries the run's wall and process CPU seconds
        # so far (every thread's CPU time; learning curves against CPU-hours), continued
        # from the last row a resume keeps.
        last = self.history[-1] if self.history else {}
        self._wall0 = float(last.get("wall_s", 0.0)) - self._t0
        self._cpu0 = float(last.get("cpu_s", 0.0)) - time.process_time()

    def _load(self, start_step: int) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        rows = [r for r in rows if r["step"] <= start_step]  # drop what a resume redoes
        if not self.active:
            return rows
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return rows

    @property
    def writer(self):
        """TensorBoard writer (created lazily)."""
        if self._writer is None:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
        return self._writer

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Appends a row and TensorBoard scalars."""
        row = {"step": int(step), "split": split,
               **{k: float(v) for k, v in values.items()},
               "wall_s": round(self._wall0 + time.time(), 2),
               "cpu_s": round(self._cpu0 + time.process_time(), 2)}
        self.history.append(row)
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", float(v), step)

    def count(self, molecules: int) -> None:
        """Adds molecules to the throughput counter."""
        self._mols += molecules

    def progress(self, step: int, values: dict[str, float]) -> str:
        """One progress line: step, loss, H MAE (uEh), throughput, ETA."""
        dt = max(time.time() - self._t0, 1e-9)
        rate = (step - self._s0) / dt
        eta = (self.num_steps - step) / rate if rate > 0 else float("nan")
        parts = [f"step {step}/{self.num_steps}", f"loss {values['loss']:.4g}"]
        if "h_mae" in values:
            parts.append(f"H MAE {values['h_mae'] * 1e6:.1f} uEh")
        if "energy" in values:
            parts.append(f"E RMSE {np.sqrt(values['energy']) * 27211.386:.1f} meV")
        parts += [f"{self._mols / dt:.2f} mol/s", f"ETA {_hms(eta)}"]
        line = " | ".join(parts)
        if self.active:
            print(line, file=sys.stderr, flush=True)
        return line

    def plot(self) -> str:
        """Writes ``learning_curve.png`` (train loss, validation loss and H MAE).

        Draws on a bare ``matplotlib.figure.Figure``: no pyplot state and no backend switch,
        so a notebook's inline plots keep working after training.
        """
        from matplotlib.figure import Figure
        path = os.path.join(self.workdir, "learning_curve.png")
        if not self.active:
            return path
        fig = Figure(figsize=(10, 4))
        axes = fig.subplots(1, 2)
        for split, style in (("train", "-"), ("val", "o-")):
            rows = [r for r in self.history if r["split"] == split]
            if rows:
                axes[0].semilogy([r["step"] for r in rows], [r["loss"] for r in rows], style,
                                 label=split)
                if "h_mae" in rows[0]:
                    axes[1].semilogy([r["step"] for r in rows],
                                     [r["h_mae"] * 1e6 for r in rows], style, label=split)
        axes[0].set(xlabel="step", ylabel="loss")
        axes[1].set(xlabel="step", ylabel="H MAE (uEh)")
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path

    def close(self) -> None:
        """Flushes TensorBoard."""
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def print_summary(result: dict) -> None:
    """Prints the final validation and test metrics of a run (``train_and_evaluate``'s
    result) in micro-Hartree, meV and atomic units."""
    rows = []
    for split in ("val", "test"):
        m = result.get(split) or {}
        cells = [split]
        if "h_mae" in m:
            cells += [f"H MAE {m['h_mae'] * 1e6:.2f} uEh",
                      f"diag {m['h_mae_diag'] * 1e6:.2f}", f"off-diag {m['h_mae_offdiag'] * 1e6:.2f}"]
        if "energy_ae" in m:
            cells.append(f"E MAE {m['energy_ae'] * units.HARTREE_EV * 1e3:.2f} meV")
        if "forces_ae" in m:
            cells.append(f"F MAE {m['forces_ae'] * units.HARTREE_EV * 1e3:.2f} meV/A")
        if "orbital_energy_mae" in m:
            mev = units.HARTREE_EV * 1e3
            cells += [f"orbital energy MAE {m['orbital_energy_mae'] * mev:.1f} meV",
                      f"gap {m['gap_mae'] * mev:.1f} meV", f"dipole {m['dipole_mae']:.4f} au",
                      f"polarizability {m['polarizability_mae']:.3f} au"]
        rows.append(" | ".join(cells))
    first, last = result.get("test_step0") or {}, result.get("test") or {}
    if "h_mae" in first and "h_mae" in last:
        rows.append(f"test H MAE at step 0: {first['h_mae'] * 1e6:.2f} uEh "
                    f"({first['h_mae'] / last['h_mae']:.1f}x the final value)")
    print("\n".join(rows), flush=True)
