"""Predicts H (and orbital energies) for every structure of an xyz file.

    python experiments/predict.py --checkpoint=/tmp/omol_small --xyz=mols.xyz --out=pred.h5

The output is a project HDF5 file (``helm_jax/data/h5format.py``): per structure the
predicted ``fock`` (PySCF AO order of the checkpoint's basis), the PySCF ``overlap``, the
``mo_energy`` and, for checkpoints with a trained energy head, ``energy`` and
``forces``. The logic is in ``helm_jax.predict.write_predictions``.
"""

import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Workdir of experiments/run.py or a checkpoint dir.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a workdir.")
flags.DEFINE_string("xyz", None, "Input xyz / extended-xyz / ASE db file.")
flags.DEFINE_string("out", None, "Output HDF5 file.")
flags.mark_flags_as_required(["checkpoint", "xyz", "out"])


def main(argv):
    """Predicts every structure of ``--xyz`` into the HDF5 file ``--out``."""
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    from helm_jax import predict

    predictor = predict.Predictor.from_checkpoint(FLAGS.checkpoint, which=FLAGS.which)
    n = predict.write_predictions(predictor, FLAGS.xyz, FLAGS.out)
    print(f"Wrote {n} predicted Hamiltonians to {FLAGS.out} "
          f"({predictor.num_compilations} compiled shapes).")


if __name__ == "__main__":
    app.run(main)
