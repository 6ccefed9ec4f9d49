"""ConcatReader: several project files of one basis read as one dataset."""

import os
import pickle
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helm_jax.data import readers  # pylint: disable=wrong-import-position
from test_data_readers import _labels, _write_project  # pylint: disable=wrong-import-position
from molecules import ETHANOL, WATER  # pylint: disable=wrong-import-position


def test_concat_reads_parts_in_order_with_unique_keys_and_converged_pool(tmp_path):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    labs_a = [_labels(WATER, "def2-svp", seed=k) for k in (0, 1)]
    labs_b = [_labels(ETHANOL, "def2-svp", seed=k) for k in (2, 3, 4)]
    _write_project(a, labs_a, converged=[True, True])
    _write_project(b, labs_b, converged=[True, False, True])
    ds = readers.ConcatReader([readers.open_dataset(a), readers.open_dataset(b)])
    assert len(ds) == 5 and ds.basis == "def2-svp" and ds.path == f"{a}+{b}"
    assert ds.keys == ["0:0000000", "0:0000001", "1:0000000", "1:0000001", "1:0000002"]
    for i, lab in enumerate(labs_a + labs_b):
        rec = ds[i]
        np.testing.assert_array_equal(rec.fock, lab["h"])
        np.testing.assert_array_equal(rec.coords, lab["coords"])
        np.testing.assert_array_equal(ds.coords(i), lab["coords"])
        assert rec.key == ds.keys[i] and rec.energy == lab["energy"]
    np.testing.assert_array_equal(ds[-1].fock, labs_b[2]["h"])
    np.testing.assert_array_equal(ds.converged_indices(), [0, 1, 2, 4])
    parts = ds.splits(seed=0, sizes=(2, None))
    assert sorted(np.concatenate(list(parts.values())).tolist()) == [0, 1, 2, 4]
    again = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(again[3].fock, labs_b[1]["h"])
    with pytest.raises(IndexError, match="out of range for 5 records"):
        ds[5]


def test_concat_refuses_mixed_bases_and_empty(tmp_path):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    _write_project(a, [_labels(WATER, "def2-svp")], converged=[True])
    _write_project(b, [_labels(WATER, "def2-svp")], converged=[True])
    with h5py.File(b, "a") as f:
        f.attrs["basis"] = "def2-tzvp"
    with pytest.raises(ValueError, match="different bases.*def2-svp.*def2-tzvp"):
        readers.ConcatReader([readers.open_dataset(a), readers.open_dataset(b)])
    with pytest.raises(ValueError, match="at least one"):
        readers.ConcatReader([])


def test_embedded_open_shell_config_concatenates_both_embedded_sets(tmp_path, monkeypatch):
    from helm_jax.configs import omol_pretrain  # pylint: disable=import-outside-toplevel
    from helm_jax.data import datasets, embedded  # pylint: disable=import-outside-toplevel
    files = {embedded.GEOMETRIES: str(tmp_path / "closed.h5"),
             embedded.OPEN_SHELL_GEOMETRIES: str(tmp_path / "open.h5")}
    _write_project(files[embedded.GEOMETRIES], [_labels(WATER, "def2-svp")], [True])
    _write_project(files[embedded.OPEN_SHELL_GEOMETRIES],
                   [_labels(ETHANOL, "def2-svp", seed=k) for k in (1, 2)], [True, True])
    asked = []

    def fake_labelled(geometries=embedded.GEOMETRIES, limit=None, **kw):
        asked.append((geometries, limit))
        return files[geometries]
    monkeypatch.setattr(embedded, "ensure_labelled", fake_labelled)
    config = omol_pretrain.get_config("small,open_shell")
    reader = datasets.open_reader(config.data)
    assert isinstance(reader, readers.ConcatReader) and len(reader) == 3
    assert asked == [(embedded.GEOMETRIES, 40), (embedded.OPEN_SHELL_GEOMETRIES, 40)]
    assert reader.keys[1:] == ["1:0000000", "1:0000001"]
    assert (config.model.charge_spin_embedding, config.heads.spin) == (True, "sum_diff")
    config.data.path = files[embedded.GEOMETRIES]
    with pytest.raises(ValueError, match="embedded_open_shell needs config.data.path='embedded'"):
        datasets.open_reader(config.data)


def test_level_of_theory_of_a_concatenation_is_the_shared_one(tmp_path):
    from helm_jax import pyscf_metrics  # pylint: disable=import-outside-toplevel
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    _write_project(a, [_labels(WATER, "def2-svp")], converged=[True])
    _write_project(b, [_labels(WATER, "def2-svp")], converged=[True])
    both = readers.ConcatReader([readers.open_dataset(a), readers.open_dataset(b)])
    level = pyscf_metrics.reader_level_of_theory(both)
    assert (level.method, level.basis, level.grid_level) == ("pbe", "def2-svp", 3)
    assert pyscf_metrics.reader_level_of_theory(both, grid_level=1).grid_level == 1
    c = str(tmp_path / "c.h5")
    _write_project(c, [_labels(WATER, "def2-svp")], converged=[True])
    with h5py.File(c, "a") as f:
        f.attrs["grid_level"] = 4
    both = readers.ConcatReader([readers.open_dataset(a), readers.open_dataset(c)])
    with pytest.raises(ValueError, match="labelled at different levels"):
        pyscf_metrics.reader_level_of_theory(both)
    assert pyscf_metrics.reader_level_of_theory(both, grid_level=3).grid_level == 3
