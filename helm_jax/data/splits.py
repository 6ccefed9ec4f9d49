"""Train/val/test splits: sizes from ``config.data``, index assignment, ``<workdir>/splits.json``.

    parts = from_config(config.data, reader)    # {"train": idx, "val": idx, "test": idx}
    save(workdir, parts)                        # <workdir>/splits.json
    parts = load_for_checkpoint("<workdir>/checkpoints/best/1200")

The split of a run is drawn once over the converged records (:func:`assign`), used for
training and statistics, and saved in the run's workdir so evaluation uses exactly the same
indices. A checkpoint lives at ``<workdir>/checkpoints/{latest,best}/<step>`` (see
:mod:`helm_jax.checkpoint`), so its run's ``splits.json`` is found from its path alone
(:func:`workdir_of_checkpoint`). A dataset's own published split is the reader's
``published_splits()``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

SPLITS_FILE = "splits.json"
ORDERS = ("random", "contiguous")
NAMES = ("train", "val", "test")  # the names of sizes given as a sequence
CHECKPOINTS_DIR = "checkpoints"  # <workdir>/checkpoints/{latest,best}: helm_jax.checkpoint
MANAGERS = ("latest", "best")


def sizes_from_config(n: int, split: Mapping[str, Any]) -> dict[str, int | None]:
    """Counts of ``config.data.split`` over ``n`` records: fractions (< 1) become counts,
    ints and None ("the rest") are kept."""
    out = {}
    for name, v in split.items():
        out[name] = None if v is None else (int(round(v * n)) if isinstance(v, float) and v < 1
                                            else int(v))
    return out


def named_sizes(sizes: Mapping[str, int | None] | Sequence[int | None]
                ) -> dict[str, int | None]:
    """``{name: count}``; counts given in order name ``train``, ``val``, ``test``, ``split3``..."""
    if isinstance(sizes, Mapping):
        return dict(sizes)
    names = (*NAMES, *[f"split{k}" for k in range(len(NAMES), len(sizes))])
    return dict(zip(names, sizes))


def assign(pool: np.ndarray,
           sizes: Mapping[str, int | None] | Sequence[int | None] = (None,),
           seed: int = 0, order: str = "random", source: str = "the dataset") -> dict[str, np.ndarray]:
    """Disjoint splits of the indices in ``pool`` (the converged records).

    Args:
      pool: int indices to split, in file order.
      sizes: ``{name: count}`` or counts for ``("train", "val", "test")`` in order; at most
        one count may be None, meaning "all remaining records".
      seed: seed of the permutation (``order="random"``).
      order: ``"random"`` (a seeded permutation) or ``"contiguous"`` (file order: the
        first records train, the next validate, ...; published splits such as "frames
        0-249 train, 250-299 validation" and the HELM reference's keys-list slices).
      source: what the pool belongs to, for error messages (the dataset path).

    Returns:
      ``{name: sorted int64 indices}``.
    """
    sizes = named_sizes(sizes)
    if order not in ORDERS:
        raise ValueError(f"split order {order!r}: use 'random' or 'contiguous'")
    pool = np.asarray(pool)
    if order == "random":
        pool = np.random.default_rng(seed).permutation(pool)
    fixed = sum(int(n) for n in sizes.values() if n is not None)
    if sum(n is None for n in sizes.values()) > 1 or fixed > len(pool) or any(
            n is not None and n < 0 for n in sizes.values()):
        raise ValueError(f"split sizes {dict(sizes)} do not fit the {len(pool)} converged "
                         f"records of {source} (at most one size may be None = rest)")
    out, start = {}, 0
    for name, n in sizes.items():
        n = len(pool) - fixed if n is None else int(n)
        out[name] = np.sort(pool[start:start + n]).astype(np.int64)
        start += n
    return out


def from_config(data_cfg: Mapping[str, Any], reader) -> dict[str, np.ndarray]:
    """The split ``data_cfg`` (``split``, ``split_seed``, ``split_order``) asks for, over the
    converged records of ``reader``."""
    pool = reader.converged_indices()
    sizes = sizes_from_config(len(pool), dict(data_cfg["split"]))
    if data_cfg["split_order"] == "contiguous":
        # File order means train, then val, then test: a ConfigDict lists its keys sorted
        # (test, train, val), which would put the test records first. (Random splits keep
        # the key order they have always had, so stored results stay reproducible.)
        sizes = {**{k: sizes[k] for k in NAMES if k in sizes}, **sizes}
    return assign(pool, sizes, seed=int(data_cfg["split_seed"]),
                  order=data_cfg["split_order"], source=reader.path)


def splits_path(workdir: str) -> str:
    """``<workdir>/splits.json``."""
    return os.path.join(workdir, SPLITS_FILE)


def save(workdir: str, parts: Mapping[str, np.ndarray]) -> str:
    """Writes ``{name: [indices]}`` to ``<workdir>/splits.json``; returns the path."""
    path = splits_path(workdir)
    with open(path, "w") as f:
        json.dump({k: [int(i) for i in v] for k, v in parts.items()}, f)
    return path


def load(workdir: str) -> dict[str, np.ndarray]:
    """``<workdir>/splits.json`` as ``{name: int64 indices}``.

    Raises:
      FileNotFoundError: naming the path when the file is missing.
    """
    path = splits_path(workdir)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no {SPLITS_FILE} at {path!r}: the run's split is saved there by "
            "helm_jax.train.load_data(config, workdir); evaluate another file with "
            "data=... to split it by the checkpoint's config instead")
    with open(path) as f:
        return {k: np.asarray(v, np.int64) for k, v in json.load(f).items()}


def workdir_of_checkpoint(path: str) -> str:
    """The workdir of a checkpoint path, from the layout of :mod:`helm_jax.checkpoint`.

    Accepts what :func:`helm_jax.checkpoint.load_model` accepts: the workdir itself,
    ``<workdir>/checkpoints``, ``<workdir>/checkpoints/{latest,best}`` or a step directory
    ``<workdir>/checkpoints/{latest,best}/<step>``. Anything else is taken as the workdir.
    """
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    if parts[-1].isdigit() and len(parts) > 3 and parts[-2] in MANAGERS \
            and parts[-3] == CHECKPOINTS_DIR:
        return os.sep.join(parts[:-3]) or os.sep
    if len(parts) > 2 and parts[-1] in MANAGERS and parts[-2] == CHECKPOINTS_DIR:
        return os.sep.join(parts[:-2]) or os.sep
    if parts[-1] == CHECKPOINTS_DIR:
        return os.path.dirname(path)
    return path


def load_for_checkpoint(checkpoint: str) -> dict[str, np.ndarray]:
    """The ``splits.json`` of the run that wrote ``checkpoint`` (see :func:`load`)."""
    return load(workdir_of_checkpoint(checkpoint))
