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
sys.path.insert(0, _HERE)  # so a fork's config file can `import omol_pretrain`
sys.path.insert(0, os.getcwd())  # so a fork's modules (e.g. my_fork.losses) import

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and logs go "
                    "(default: workdirs/<config name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from helm_jax import train
    workdir = FLAGS.workdir or os.path.join("workdirs", FLAGS.config.get("name", "run"))
    train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == "__main__":
    app.run(main)
