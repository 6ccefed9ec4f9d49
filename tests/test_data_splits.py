"""The splits module: sizes from a split config, index assignment, ``splits.json``."""

import os
import re

import numpy as np
import pytest

from helm_jax.data import splits


def test_sizes_from_config_turns_fractions_into_counts():
    assert splits.sizes_from_config(40, {"train": 0.8, "val": 0.1, "test": None}) == {
        "train": 32, "val": 4, "test": None}
    assert splits.sizes_from_config(40, {"train": 30, "val": 1.0, "test": 0.05}) == {
        "train": 30, "val": 1, "test": 2}


def test_assign_random_is_seeded_and_contiguous_keeps_file_order():
    pool = np.array([0, 1, 3, 4, 6, 7, 9], np.int64)
    a = splits.assign(pool, (3, 2, None), seed=5)
    b = splits.assign(pool, {"train": 3, "val": 2, "test": None}, seed=5)
    assert [len(v) for v in a.values()] == [3, 2, 2] and list(a) == ["train", "val", "test"]
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == np.int64 for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == pool.tolist()
    perm = np.random.default_rng(5).permutation(pool)  # the documented recipe
    assert a["train"].tolist() == sorted(perm[:3].tolist())
    ordered = splits.assign(pool, (3, 2, None), order="contiguous")
    assert [v.tolist() for v in ordered.values()] == [[0, 1, 3], [4, 6], [7, 9]]
    with pytest.raises(ValueError, match="do not fit the 7 converged records of f.h5"):
        splits.assign(pool, (None, None), source="f.h5")
    with pytest.raises(ValueError, match="split order 'sorted'"):
        splits.assign(pool, (2, None), order="sorted")


def test_sizes_and_indices_round_trip_through_splits_json(tmp_path):
    pool = np.arange(20, dtype=np.int64)
    sizes = splits.sizes_from_config(len(pool), {"train": 0.5, "val": 3, "test": None})
    parts = splits.assign(pool, sizes, seed=11)
    path = splits.save(str(tmp_path), parts)
    assert path == os.path.join(str(tmp_path), "splits.json")
    back = splits.load(str(tmp_path))
    assert list(back) == list(parts) and {k: len(v) for k, v in back.items()} == {
        "train": 10, "val": 3, "test": 7}
    assert all(np.array_equal(back[k], parts[k]) and back[k].dtype == np.int64 for k in parts)
    step = os.path.join(str(tmp_path), "checkpoints", "best", "120")
    for ckpt in (str(tmp_path), os.path.join(str(tmp_path), "checkpoints"),
                 os.path.dirname(step), step):
        assert splits.workdir_of_checkpoint(ckpt) == str(tmp_path)
        assert np.array_equal(splits.load_for_checkpoint(ckpt)["test"], parts["test"])


def test_missing_splits_json_names_the_path(tmp_path):
    ckpt = os.path.join(str(tmp_path), "run", "checkpoints", "latest", "7")
    expected = os.path.join(str(tmp_path), "run", "splits.json")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no splits.json at {expected!r}")):
        splits.load_for_checkpoint(ckpt)


def test_contiguous_config_split_is_train_then_val_then_test():
    """A ConfigDict lists its keys sorted (test, train, val); file order must still give the
    first records to train, the next to val and the rest to test."""
    import ml_collections

    class Reader:
        path = "cells.h5"

        def converged_indices(self):
            return np.arange(26)

    cfg = ml_collections.ConfigDict(dict(split=dict(train=16, val=4, test=None), split_seed=0,
                                         split_order="contiguous"))
    assert list(dict(cfg.split)) == ["test", "train", "val"]
    parts = splits.from_config(cfg, Reader())
    assert parts["train"].tolist() == list(range(16))
    assert parts["val"].tolist() == list(range(16, 20))
    assert parts["test"].tolist() == list(range(20, 26))
