"""Test configuration: import path and CPU-only JAX."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile many tiny programs: XLA optimisation passes cost more than they save.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))


# Cache every compiled program, however small or quick to compile.
_CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
    """One fresh XLA compilation cache per test session, shared by the xdist workers and the
    subprocesses the tests start: many tests compile the same tiny programs, and compiling
    is most of their time. Fresh per session, so the suite's time is what a clean machine
    sees. ``JAX_COMPILATION_CACHE_DIR`` set by the caller wins."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # xdist workers inherit the controller's variables
    import tempfile
    path = tempfile.mkdtemp(prefix="helm_jax_xla_cache_")
    config._helm_xla_cache = path
    os.environ.update(_CACHE_ENV, JAX_COMPILATION_CACHE_DIR=path)


def pytest_unconfigure(config):
    path = getattr(config, "_helm_xla_cache", None)
    if path:
        import shutil
        shutil.rmtree(path, ignore_errors=True)
        for key in ("JAX_COMPILATION_CACHE_DIR", *_CACHE_ENV):
            os.environ.pop(key, None)
