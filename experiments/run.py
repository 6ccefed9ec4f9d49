"""Main entry point: ``python experiments/run.py --config=experiments/omol_pretrain.py``.

Intentionally thin: the logic lives in ``helm_jax.train`` so notebooks can call
``train_and_evaluate(config, workdir)`` directly.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # helm_jax without installing
sys.path.insert(0, _HERE)  # so a fork's config file beside these can import its neighbours
sys.path.insert(0, os.getcwd())  # so a fork's modules (e.g. my_fork.losses) import

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and logs go "
                    "(default: workdirs/<config name>).")
flags.DEFINE_bool("distributed", False, "Multi-process run (several hosts, a TPU pod slice): "
                  "call jax.distributed.initialize() first, with the process layout detected "
                  "from the cluster (SLURM, Open MPI, Cloud TPU) or given by the flags below. "
                  "The data pipeline is single-host: see docs/devices.md.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies "
                    "--distributed); with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "Number of processes (one per host).")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config"])


def initialize_distributed() -> None:
    """Starts multi-process JAX from the flags (before any device is touched).

    Without flags, ``helm_jax.train`` still initialises when it detects a launch from the
    environment (``helm_jax.parallel.initialize_distributed``).
    """
    if FLAGS.distributed or FLAGS.coordinator_address:
        import jax
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)


def main(argv):
    """Trains ``--config`` into ``--workdir`` (resuming a checkpoint found there)."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    initialize_distributed()
    from helm_jax import train
    workdir = FLAGS.workdir or os.path.join("workdirs", FLAGS.config.get("name", "run"))
    train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == "__main__":
    app.run(main)
