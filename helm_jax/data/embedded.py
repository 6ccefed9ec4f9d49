"""The embedded default dataset: small molecules shipped as text, labelled on first use.

Geometries live in ``helm_jax/data/embedded/molecules.extxyz`` (closed shells) and
``open_shell.extxyz`` (radicals and ions; see the README there).
Labels are computed on first use at PBE/def2-TZVPD (ECP def2-TZVPD, density fitting) with
the resumable labeller and cached as ``embedded-<hash>.h5``; the hash covers the geometry
file's bytes and the level of theory, so a changed file or setting relabels into a new file.

Periodic sets (docs/periodic.md, "Embedded periodic sets"): ``periodic_<name>.extxyz`` with
``name`` in :data:`PERIODIC_GEOMETRIES` (graphene, hbn, diamond: train + val + test frames of
``data_prep/make_periodic_cells.py``, a ``split=`` key per frame, in that order; small: three
h-BN cells for CI), labelled on first use with PySCF-PBC at :data:`PERIODIC_SETTINGS`
(:func:`ensure_labelled_periodic`) and cached in the same directory as
``embedded-periodic-<hash>.h5``, the hash covering the file's bytes and the
``labelling_pbc.PeriodicSettings``. Labels made elsewhere from the same frames at the same
settings (e.g. a labelling run on another machine) are copied into the cache
by :func:`import_periodic_labels` (``python -m helm_jax.data.embedded --periodic=hbn
--import_labels=a.h5,b.h5,c.h5``) instead of relabelling.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys

import numpy as np

from helm_jax.data import labelling, labelling_pbc

GEOMETRIES = os.path.join(os.path.dirname(__file__), "embedded", "molecules.extxyz")
# Radicals, radical ions and closed-shell ions of the same elements (labelled UKS where
# 2S > 0); used with ``config.data.embedded_open_shell``.
OPEN_SHELL_GEOMETRIES = os.path.join(os.path.dirname(__file__), "embedded", "open_shell.extxyz")
LEVEL = labelling.LevelOfTheory(method="pbe", basis="def2-tzvpd", ecp="def2-tzvpd",
                                grid_level=3, density_fit=True, conv_tol=1e-9)

_DIR = os.path.join(os.path.dirname(__file__), "embedded")
#: Periodic geometry files (``split=train|val|test`` per frame, in that order).
PERIODIC_GEOMETRIES = {name: os.path.join(_DIR, f"periodic_{name}.extxyz")
                       for name in ("graphene", "hbn", "diamond", "small")}
_PBC_LEVEL = dict(method="pbe", basis="gth-szv", pseudo="gth-pbe", density_fit="gdf",
                  conv_tol=1e-9)
#: Labelling settings of each periodic set (docs/periodic.md: 8x8x1 is the mesh whose exact
#: labels interpolate to ~1e-6 Eh off the mesh; the small CI set trades that for speed).
PERIODIC_SETTINGS = {
    "graphene": labelling_pbc.PeriodicSettings(kmesh=(8, 8, 1), smearing=0.01, **_PBC_LEVEL),
    "hbn": labelling_pbc.PeriodicSettings(kmesh=(8, 8, 1), **_PBC_LEVEL),
    "diamond": labelling_pbc.PeriodicSettings(kmesh=(3, 3, 3), **_PBC_LEVEL),
    "small": labelling_pbc.PeriodicSettings(kmesh=(3, 3, 1), **_PBC_LEVEL),
}


def default_cache_dir() -> str:
    """``$HELM_JAX_CACHE`` or ``~/.cache/helm_jax``."""
    return os.environ.get("HELM_JAX_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "helm_jax"))


def _hash(geometries: str, settings: dict) -> str:
    """sha256 of the file's bytes and the JSON of ``settings`` (12 hex digits)."""
    h = hashlib.sha256()
    with open(geometries, "rb") as f:
        h.update(f.read())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:12]


def cache_key(geometries: str = GEOMETRIES,
              level: labelling.LevelOfTheory = LEVEL) -> str:
    """Hash of the geometry file and the level of theory (12 hex digits)."""
    return _hash(geometries, dataclasses.asdict(level))


def periodic_cache_key(geometries: str,
                       settings: labelling_pbc.PeriodicSettings) -> str:
    """Hash of a periodic geometry file and its ``PeriodicSettings`` (12 hex digits; never
    equal to a molecular key of the same file)."""
    return _hash(geometries, {"periodic": dataclasses.asdict(settings)})


def _cache_path(prefix: str, key: str, cache_dir: str | None, limit: int | None) -> str:
    """``<cache_dir>/<prefix>-<key>[-first<limit>].h5`` (the directory is created)."""
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    suffix = "" if limit is None else f"-first{limit}"
    return os.path.join(cache_dir, f"{prefix}-{key}{suffix}.h5")


def _default_workers(workers: int | None) -> int:
    return workers or max(1, min(4, os.cpu_count() or 1))


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
    out = _cache_path("embedded", cache_key(geometries, level), cache_dir, limit)
    if os.path.exists(out) and not os.path.exists(out + ".parts"):
        return out
    workers = _default_workers(workers)
    labelling.label_file(geometries, out, level, workers=workers, threads=1, limit=limit,
                         progress=progress)
    return out


def _periodic_args(geometries: str, settings: labelling_pbc.PeriodicSettings | None
                   ) -> tuple[str, labelling_pbc.PeriodicSettings]:
    """A set name (``"hbn"``) or a file path, and its settings (the set's by default)."""
    by_path = {os.path.abspath(p): name for name, p in PERIODIC_GEOMETRIES.items()}
    name = geometries if geometries in PERIODIC_GEOMETRIES else by_path.get(
        os.path.abspath(geometries))
    if name is not None:
        settings = settings or PERIODIC_SETTINGS[name]
        geometries = PERIODIC_GEOMETRIES[name]
    if settings is None:
        raise ValueError(f"{geometries}: give the PeriodicSettings to label it with (or the "
                         f"name of an embedded set: {sorted(PERIODIC_GEOMETRIES)})")
    return geometries, settings


def periodic_cache_path(geometries: str = "small",
                        settings: labelling_pbc.PeriodicSettings | None = None,
                        cache_dir: str | None = None, limit: int | None = None) -> str:
    """Where :func:`ensure_labelled_periodic` keeps the labels of a periodic set."""
    geometries, settings = _periodic_args(geometries, settings)
    return _cache_path("embedded-periodic", periodic_cache_key(geometries, settings),
                       cache_dir, limit)


def _n_groups(path: str) -> int:
    import h5py  # pylint: disable=import-outside-toplevel
    with h5py.File(path, "r") as f:
        return len(f.keys())


def _n_frames(geometries: str) -> int:
    with open(geometries) as fh:
        lines = fh.read().splitlines()
    n, i = 0, 0
    while i < len(lines) and lines[i].strip():
        i += int(lines[i]) + 2
        n += 1
    return n


def ensure_labelled_periodic(geometries: str = "small",
                             settings: labelling_pbc.PeriodicSettings | None = None,
                             cache_dir: str | None = None, workers: int | None = None,
                             limit: int | None = None, progress: bool = True) -> str:
    """Labels a periodic geometry file if needed (PySCF-PBC) and returns the HDF5 path.

    The cache file is ``embedded-periodic-<periodic_cache_key>.h5`` in the molecular sets'
    cache directory. A cache file with fewer structures than requested (e.g. a partial
    :func:`import_periodic_labels`) is completed by the resumable labeller, which skips
    the structures it holds.

    Args:
      geometries: an embedded set's name (:data:`PERIODIC_GEOMETRIES`: "graphene", "hbn",
        "diamond", "small") or an extended-xyz path (``Lattice=`` and ``pbc=`` per frame).
      settings: ``labelling_pbc.PeriodicSettings`` (default: the named set's
        :data:`PERIODIC_SETTINGS`; required for a path).
      cache_dir: default :func:`default_cache_dir`.
      workers: labelling processes, one thread each (default: one per core, at most 4).
      limit: label only the first ``limit`` structures; part of the file name.
      progress: show a progress bar.

    Returns:
      Path of the labelled periodic HDF5 file (``open_dataset(path, periodic=True)``).
    """
    geometries, settings = _periodic_args(geometries, settings)
    out = periodic_cache_path(geometries, settings, cache_dir, limit)
    want = _n_frames(geometries) if limit is None else min(limit, _n_frames(geometries))
    if os.path.exists(out) and not os.path.exists(out + ".parts") and _n_groups(out) >= want:
        return out
    labelling_pbc.label_file(geometries, out, settings, workers=_default_workers(workers),
                             threads=1, limit=limit, progress=progress)
    return out


def periodic_splits(geometries: str = "small") -> dict[str, np.ndarray]:
    """``{split: int64 frame indices}`` from the ``split=`` key of each frame's comment line
    (frames without one go to "train"). The embedded files list train, val, test in that
    order, so ``split_order="contiguous"`` with these counts gives the same split."""
    geometries = PERIODIC_GEOMETRIES.get(geometries, geometries)
    import ase.io  # pylint: disable=import-outside-toplevel
    names = [str(a.info.get("split", "train")) for a in ase.io.read(geometries, index=":")]
    return {name: np.flatnonzero(np.array(names) == name).astype(np.int64)
            for name in dict.fromkeys(names)}


def _fingerprint(elements, coords, cell, pbc) -> tuple:
    """Geometry key to 1e-6 A (the match is then checked to 1e-8 A)."""
    return (tuple(int(z) for z in elements),
            tuple(np.round(np.asarray(coords, np.float64), 6).reshape(-1).tolist()),
            tuple(np.round(np.asarray(cell, np.float64), 6).reshape(-1).tolist()),
            tuple(bool(p) for p in np.asarray(pbc).reshape(-1)))


def import_periodic_labels(sources, geometries: str = "small",
                           settings: labelling_pbc.PeriodicSettings | None = None,
                           cache_dir: str | None = None, allow_missing: bool = False) -> str:
    """Copies labels made elsewhere into the cache of :func:`ensure_labelled_periodic`.

    Every source file must have been labelled at ``settings`` (``band_path`` excepted: a
    source labelled with ``--band_path`` keeps its ``path_kpts``/``path_bands`` datasets in
    the copied groups, while the cache file records the settings of its key). Each frame of
    ``geometries`` is matched to a source structure with the same elements, coordinates,
    cell and pbc (to 1e-8 A; any order, any source) and its group is copied verbatim
    (checksums kept) under the frame's index; the result is then read back and verified.

    Args:
      sources: label files (paths, or one comma-separated string), e.g. the train, val and
        test files labelled from the set's frames (docs/periodic.md, "Datasets").
      geometries, settings: as :func:`ensure_labelled_periodic`.
      cache_dir: default :func:`default_cache_dir`.
      allow_missing: copy the frames found and leave the others to
        :func:`ensure_labelled_periodic` (which labels only those); otherwise a frame
        without a source is an error and nothing is written.

    Returns:
      The cache path (as :func:`periodic_cache_path`).

    Raises:
      ValueError: a source with other settings, a frame without a source (unless
        ``allow_missing``), or an existing cache file (delete it to re-import).
    """
    import h5py  # pylint: disable=import-outside-toplevel
    from helm_jax.data import geometry, h5format  # pylint: disable=import-outside-toplevel
    from helm_jax.data.readers import open_dataset  # pylint: disable=import-outside-toplevel

    geometries, settings = _periodic_args(geometries, settings)
    if isinstance(sources, str):
        sources = [p for p in sources.split(",") if p]
    out = periodic_cache_path(geometries, settings, cache_dir)
    if os.path.exists(out) or os.path.exists(out + ".parts"):
        raise ValueError(f"{out} exists already (or its .parts): delete it to re-import")
    wanted = {k: v for k, v in settings.attrs().items() if k != "band_path"}
    found = {}
    for path in sources:
        with h5format.open_h5(path) as f:
            labelling._check_same_theory(  # pylint: disable=protected-access
                dict(f.attrs), wanted, path)
            for key in f:
                g = f[key]
                found.setdefault(_fingerprint(g["elements"][()], g["coords"][()],
                                              g["cell"][()], g["pbc"][()]), (path, key))
    frames = geometry.read_structures(geometries)
    plan, missing = {}, []
    for i, s in enumerate(frames):
        hit = found.get(_fingerprint(s.elements, s.coords, s.cell, s.pbc))
        if hit is None:
            missing.append(i)
        else:
            plan[h5format.group_key(i)] = (hit, s)
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} of {len(frames)} frames of {geometries} are in none "
                         f"of {list(sources)} (first: frame {missing[0]}); label them, or pass "
                         "allow_missing=True and finish with ensure_labelled_periodic")
    run_attrs = {**settings.attrs(), "input_file": os.path.basename(geometries)}

    def write(tmp):
        with h5py.File(tmp, "w") as dst:
            h5format.write_file_attrs(dst, run_attrs)
            dst.attrs["imported_from"] = json.dumps([os.path.abspath(p) for p in sources])
            for key, ((path, src_key), s) in sorted(plan.items()):
                with h5py.File(path, "r") as src:
                    g = src[src_key]
                    if not (np.allclose(g["coords"][()], s.coords, rtol=0, atol=1e-8)
                            and np.allclose(g["cell"][()], s.cell, rtol=0, atol=1e-8)):
                        raise ValueError(f"{path}/{src_key}: geometry differs from frame "
                                         f"{int(key)} of {geometries} by more than 1e-8 A")
                    src.copy(g, dst, name=key)

    if plan:
        labelling._atomic_write(out, write)  # pylint: disable=protected-access
        ds = open_dataset(out, periodic=True)  # checksums verified on read
        for i in range(len(ds)):
            ds[i]  # pylint: disable=pointless-statement
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m helm_jax.data.embedded --periodic=NAME [--import_labels=A,B,C]``: labels
    (or imports labels of) an embedded periodic set and prints the cache path."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--periodic", required=True, choices=sorted(PERIODIC_GEOMETRIES))
    p.add_argument("--import_labels", default="",
                   help="comma-separated label files of the same frames and settings")
    p.add_argument("--allow_missing", action="store_true")
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    try:
        if a.import_labels:
            path = import_periodic_labels(a.import_labels, a.periodic, cache_dir=a.cache_dir,
                                          allow_missing=a.allow_missing)
        else:
            path = ensure_labelled_periodic(a.periodic, cache_dir=a.cache_dir,
                                            workers=a.workers)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
