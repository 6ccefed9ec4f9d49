#!/usr/bin/env bash
# One-command accelerator check (docs/devices.md, "Accelerator check"):
#
#   bash benchmarks/device_check.sh            # ~8 min on one GPU: writes $OUT/device_check.json
#   bash benchmarks/device_check.sh --quick    # tiny models (a few minutes on a CPU)
#   JAX_PLATFORMS=cpu bash benchmarks/device_check.sh --quick --parts=equivariance,water_box
#
# Installs the wheels in .whl/ (pyscf, e3nn-jax, jraph, ml-collections, ase, tensorboardX; the
# machine's own jax, flax, optax, orbax-checkpoint, numpy, scipy and h5py stay) into /tmp/site
# when that folder exists, prints jax.devices(), then runs benchmarks/device_check.py with
# every argument given here. Python: $PYTHON, else .venv/bin/python when present, else python3.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl \
    || echo "warning: pip install of .whl/*.whl failed (exit $?); continuing" >&2
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import sys, jax; print('python', sys.version.split()[0], '| jax', jax.__version__, '|', jax.devices())" \
  || echo "warning: jax.devices() failed" >&2
exec "$PY" benchmarks/device_check.py "$@"
