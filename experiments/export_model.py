"""Exports a training run's model for publishing: parameters and metadata, no optimiser
state (a third of the checkpoint's size for Adam), readable by ``Predictor.from_checkpoint``.

    python experiments/export_model.py --checkpoint=workdirs/md17_ethanol_converge \\
        --out=checkpoints/rmd17_ethanol_pbe_svp --metrics=eval_test/metrics.json

``--metrics`` (a metrics.json of experiments/evaluate.py) is stored in the metadata under
``test_metrics``. The export refuses to overwrite a non-empty ``--out``.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Workdir of experiments/run.py or a checkpoint dir.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a workdir.")
flags.DEFINE_string("out", None, "New folder for the exported model.")
flags.DEFINE_string("metrics", None, "metrics.json of experiments/evaluate.py to include.")
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
    """Exports --checkpoint into --out and prints the step directory and its size."""
    del argv
    from helm_jax import checkpoint
    extra = {}
    if FLAGS.metrics:
        with open(FLAGS.metrics) as f:
            extra["test_metrics"] = json.load(f)
    step_dir = checkpoint.export_model(FLAGS.checkpoint, FLAGS.out, FLAGS.which, **extra)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(step_dir)
               for f in fs)
    print(f"wrote {step_dir} ({size / 2 ** 20:.1f} MiB)")


if __name__ == "__main__":
    app.run(main)
