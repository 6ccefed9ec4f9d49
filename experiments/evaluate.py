"""Evaluates a checkpoint on a dataset split: H, orbital, energy and SCF metrics.

    python experiments/evaluate.py --checkpoint=/tmp/omol_small --split=test --out=/tmp/eval

Writes ``metrics.json``, ``molecules.csv`` and PNG plots to ``--out`` and prints a summary
table. The split is the training run's (``<workdir>/splits.json``; an error names the path
if it is missing); ``--data`` evaluates another file instead. The PySCF level of theory
comes from the dataset file; the level flags override it. Open-shell molecules (spin-resolved
labels) add per-spin columns, ``<S^2>`` and a second summary table of their means
(docs/using_a_checkpoint.md, "Open shells"). The logic is in ``helm_jax.evaluate``.
"""

import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Workdir of experiments/run.py or a checkpoint dir.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a workdir.")
flags.DEFINE_string("split", "test", "train, val, test or all.")
flags.DEFINE_string("data", None, "Evaluate this dataset file instead of the checkpoint's.")
flags.DEFINE_string("out", None, "Output folder (default: <checkpoint>/eval_<split>).")
flags.DEFINE_integer("max_molecules", None, "Evaluate only the first N molecules.")
flags.DEFINE_bool("energy", True, "PySCF energy of the predicted density.")
flags.DEFINE_bool("scf", True, "SCF cycles from the predicted density vs minao.")
flags.DEFINE_string("method", None, "PySCF xc name or HF (default: the dataset file's).")
flags.DEFINE_integer("grid_level", None, "PySCF grid level (default: the dataset file's).")
flags.DEFINE_bool("density_fit", None, "Density fitting (default: the dataset file's).")
flags.DEFINE_float("conv_tol", None, "SCF convergence threshold (default: the file's).")
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    """Evaluates ``--checkpoint`` on ``--split`` and writes metrics, CSV and plots to ``--out``."""
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    from helm_jax import evaluate

    out = FLAGS.out or os.path.join(FLAGS.checkpoint, f"eval_{FLAGS.split}")
    summary = evaluate.evaluate_checkpoint(
        FLAGS.checkpoint, split=FLAGS.split, data=FLAGS.data, out=out, which=FLAGS.which,
        energy=FLAGS.energy, scf=FLAGS.scf, max_molecules=FLAGS.max_molecules,
        method=FLAGS.method, grid_level=FLAGS.grid_level, density_fit=FLAGS.density_fit,
        conv_tol=FLAGS.conv_tol)
    print(evaluate.format_summary(summary))
    print(f"Wrote metrics.json, molecules.csv and plots to {out}")


if __name__ == "__main__":
    app.run(main)
