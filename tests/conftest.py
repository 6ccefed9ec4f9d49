"""Test configuration: import path and CPU-only JAX."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile many tiny programs: XLA optimisation passes cost more than they save.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
