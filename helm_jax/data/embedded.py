"""The embedded default dataset: small molecules shipped as text, labelled on first use.

Geometries live in ``helm_jax/data/embedded/molecules.extxyz`` (closed shells) and
``open_shell.extxyz`` (radicals and ions; see the README there).
Labels are computed on first use at PBE/def2-TZVPD (ECP def2-TZVPD, density fitting) with
the resumable labeller and cached as ``embedded-<hash>.h5``; the hash covers the geometry
file's bytes and the level of theory, so a changed file or setting relabels into a new file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from helm_jax.data import labelling

GEOMETRIES = os.path.join(os.path.dirname(__file__), "embedded", "molecules.extxyz")
# Radicals, radical ions and closed-shell ions of the same elements (labelled UKS where
# 2S > 0); used with ``config.data.embedded_open_shell``.
OPEN_SHELL_GEOMETRIES = os.path.join(os.path.dirname(__file__), "embedded", "open_shell.extxyz")
LEVEL = labelling.LevelOfTheory(method="pbe", basis="def2-tzvpd", ecp="def2-tzvpd",
                                grid_level=3, density_fit=True, conv_tol=1e-9)


def default_cache_dir() -> str:
    """``$HELM_JAX_CACHE`` or ``~/.cache/helm_jax``."""
    return os.environ.get("HELM_JAX_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "helm_jax"))


def cache_key(geometries: str = GEOMETRIES,
              level: labelling.LevelOfTheory = LEVEL) -> str:
    """Hash of the geometry file and the level of theory (12 hex digits)."""
    h = hashlib.sha256()
    with open(geometries, "rb") as f:
        h.update(f.read())
    h.update(json.dumps(dataclasses.asdict(level), sort_keys=True).encode())
    return h.hexdigest()[:12]


def ensure_labelled(cache_dir: str | None = None, geometries: str = GEOMETRIES,
                    level: labelling.LevelOfTheory = LEVEL, workers: int | None = None,
                    limit: int | None = None, progress: bool = True) -> str:
    """Labels the embedded geometries if needed and returns the HDF5 path.

    Args:
      cache_dir: where the labels go (default :func:`default_cache_dir`).
      geometries: extended-xyz file (the shipped one by default).
      level: level of theory.
      workers: labelling processes (default: one per core, at most 4).
      limit: label only the first ``limit`` structures (quick tests); part of the cache key.
      progress: show a progress bar with ETA.

    Returns:
      Path of the labelled HDF5 file (the project's format).
    """
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    suffix = "" if limit is None else f"-first{limit}"
    out = os.path.join(cache_dir, f"embedded-{cache_key(geometries, level)}{suffix}.h5")
    if os.path.exists(out) and not os.path.exists(out + ".parts"):
        return out
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    labelling.label_file(geometries, out, level, workers=workers, threads=1, limit=limit,
                         progress=progress)
    return out
