"""Tests of helm_jax.data.h5format: packing, writing, the streaming reader and its errors."""

import json
import os
import pickle
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helm_jax.data import h5format  # pylint: disable=wrong-import-position
from helm_jax.data.records import DataError  # pylint: disable=wrong-import-position


def _sym(n, seed=0):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a + a.T  # [n, n]


def _record(n_atoms, nao, seed):
    rng = np.random.default_rng(seed)
    return dict(elements=rng.integers(1, 10, n_atoms), coords=rng.normal(size=(n_atoms, 3)),
                fock=_sym(nao, seed), overlap=_sym(nao, seed + 100), energy=-rng.random() * 100,
                charge=0, spin=0, n_electrons=10, converged=True, scf_cycles=7,
                source=f"x.xyz:{seed}", forces=rng.normal(size=(n_atoms, 3)))


@pytest.fixture(name="native")
def fixture_native(tmp_path):
    """A project file with 3 structures; the second one unconverged without forces."""
    path = str(tmp_path / "native.h5")
    records = [_record(3, 7, 0), _record(4, 9, 1), _record(2, 5, 2)]
    records[1].update(converged=False, forces=None)
    with h5py.File(path, "w") as f:
        h5format.write_file_attrs(f, {"method": "HF", "basis": "sto-3g", "ecp": "",
                                      "grid_level": 3, "density_fit": False, "conv_tol": 1e-9})
        for i, r in enumerate(records):
            h5format.write_structure(f, h5format.group_key(i), **r)
    return path, records


def test_pack_order_and_round_trip():
    h = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
    np.testing.assert_array_equal(h5format.pack_upper(h), [1, 2, 3, 4, 5, 6])
    for n in (1, 2, 13):
        h = _sym(n, n)
        vec = h5format.pack_upper(h)
        assert vec.shape == (n * (n + 1) // 2,)
        assert h5format.n_from_packed_len(vec.shape[0]) == n
        np.testing.assert_array_equal(h5format.unpack_upper(vec, n), h)
        np.testing.assert_array_equal(h5format.unpack_upper(vec), h)


def test_packing_errors():
    with pytest.raises(ValueError, match="packed length 5 is not a triangular number"):
        h5format.n_from_packed_len(5)
    with pytest.raises(ValueError, match="is not a triangular number"):
        h5format.n_from_packed_len(0)
    with pytest.raises(ValueError, match="is a 3x3 matrix, expected 4x4"):
        h5format.unpack_upper(np.zeros(6), 4)
    with pytest.raises(ValueError, match="square matrix"):
        h5format.pack_upper(np.zeros((2, 3)))


def test_reader_returns_what_was_written(native):
    path, records = native
    with h5format.H5Dataset(path) as ds:
        assert len(ds) == 3 and ds.keys == ["0000000", "0000001", "0000002"]
        assert ds.is_native and ds.attrs["format"] == h5format.FORMAT
        assert json.loads(ds.attrs["units"])["forces"] == "hartree/angstrom"
        assert ds.attrs["basis"] == "sto-3g" and "pyscf_version" in ds.attrs
        np.testing.assert_array_equal(ds.converged_indices(), [0, 2])
        for i, r in enumerate(records):
            rec = ds[i]
            assert rec.key == h5format.group_key(i)
            assert rec.elements.dtype == np.int32
            np.testing.assert_array_equal(rec.elements, r["elements"])
            np.testing.assert_array_equal(rec.coords, r["coords"])
            np.testing.assert_array_equal(rec.fock, r["fock"])
            np.testing.assert_array_equal(rec.overlap, r["overlap"])
            assert rec.energy == r["energy"]
            assert rec.converged == r["converged"] and rec.charge == 0 and rec.spin == 0
            if r["forces"] is None:
                assert rec.forces is None
            else:
                np.testing.assert_array_equal(rec.forces, r["forces"])
        with h5py.File(path, "r") as f:
            assert f["0000001"].attrs["source"] == "x.xyz:1"
            assert f["0000001"].attrs["scf_cycles"] == 7
        # Picklable for loader workers: the handle reopens in the copy.
        copy = pickle.loads(pickle.dumps(ds))
        np.testing.assert_array_equal(copy[2].fock, records[2]["fock"])
        copy.close()


def test_keys_sidecar_cached_and_regenerated_when_stale(native):
    path, records = native
    h5format.H5Dataset(path).close()
    with open(path + h5format.SIDECAR_SUFFIX) as fh:
        side = json.load(fh)
    assert side["keys"] == ["0000000", "0000001", "0000002"]
    assert side["converged"] == [True, False, True]
    with h5py.File(path, "a") as f:
        h5format.write_structure(f, "0000003", **records[0])
        f.create_group("0000004").create_dataset("elements", data=[1])  # half written
    with h5format.H5Dataset(path) as ds:
        assert ds.keys == ["0000000", "0000001", "0000002", "0000003"]  # incomplete skipped
    with open(path + h5format.SIDECAR_SUFFIX) as fh:
        assert json.load(fh)["keys"][-1] == "0000003"


def test_reads_omol_like_foreign_file(tmp_path):
    path = str(tmp_path / "omol.h5")
    fock = _sym(6, 3)
    with h5py.File(path, "w") as f:
        g = f.create_group("mol_a")
        g.create_dataset("elements", data=np.array([8, 1, 1]))
        g.create_dataset("coords", data=np.zeros((3, 3)) + np.arange(3)[:, None])
        g.create_dataset("fock", data=h5format.pack_upper(fock))
        g.attrs.update(charge=-1, spin=1)
    with open(path + h5format.SIDECAR_SUFFIX, "w") as fh:
        json.dump(["mol_a"], fh)  # the reference code's list sidecar: kept untouched
    with h5format.H5Dataset(path, expected_nao=6) as ds:
        assert not ds.is_native and len(ds) == 1
        rec = ds[0]
        np.testing.assert_array_equal(rec.fock, fock)
        assert rec.overlap is None and rec.energy is None and rec.forces is None
        assert rec.converged and rec.charge == -1 and rec.spin == 1
        np.testing.assert_array_equal(ds.converged_indices(), [0])
    with open(path + h5format.SIDECAR_SUFFIX) as fh:
        assert json.load(fh) == ["mol_a"]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        h5format.H5Dataset(str(tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file.*rerun the same label"):
        h5format.H5Dataset(str(junk))


def test_truncated_file(native, tmp_path):
    path, _ = native
    cut = str(tmp_path / "cut.h5")
    with open(path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read()[: os.path.getsize(path) // 2])
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        ds = h5format.H5Dataset(cut)
        for i in range(len(ds)):
            ds[i]  # pylint: disable=pointless-statement


def test_missing_group_and_dataset(native, tmp_path):
    path, _ = native
    with h5format.H5Dataset(path) as ds:
        with pytest.raises(ValueError, match="group '0000009' is missing"):
            ds.read("0000009")
    bad = str(tmp_path / "bad.h5")
    with h5py.File(bad, "w") as f:
        f.create_group("m").create_dataset("elements", data=[1, 1])
    with h5format.H5Dataset(bad) as ds, pytest.raises(ValueError,
                                                      match=r"required dataset\(s\) \['coords', 'fock'\]"):
        ds[0]  # pylint: disable=pointless-statement


def test_bad_fock_sizes(tmp_path):
    path = str(tmp_path / "sizes.h5")
    with h5py.File(path, "w") as f:
        for name, length in (("tri", 10), ("odd", 5)):
            g = f.create_group(name)
            g.create_dataset("elements", data=[1, 1])
            g.create_dataset("coords", data=np.zeros((2, 3)))
            g.create_dataset("fock", data=np.zeros(length))
    with h5format.H5Dataset(path) as ds:
        with pytest.raises(ValueError, match="odd/fock: packed length 5 is not a triangular"):
            ds.read("odd")
        assert ds.read("tri").fock.shape == (4, 4)
    with h5format.H5Dataset(path, expected_nao=lambda z: 2 * len(z) + 1) as ds:
        with pytest.raises(ValueError, match="4x4 matrix but the basis of these elements has 5"):
            ds.read("tri")
    with h5format.H5Dataset(path, expected_nao=4) as ds:
        assert ds.read("tri").fock.shape == (4, 4)


def test_checksums_written_and_verified(native, tmp_path):
    path, records = native
    with h5py.File(path, "r") as f:
        sums = json.loads(f["0000000"].attrs[h5format.CHECKSUM_ATTR])
        assert set(sums) == {"elements", "coords", "fock", "overlap", "energy", "forces",
                             h5format.ATTRS_CHECKSUM_KEY}
        assert sums["fock"] == h5format.checksum(f["0000000"]["fock"][()])
        assert "forces" not in json.loads(f["0000001"].attrs[h5format.CHECKSUM_ATTR])
    # A value changed after writing (same dtype and shape, still finite) is caught.
    with h5py.File(path, "r+") as f:
        f["0000002"]["fock"][3] += 1e-9
    with h5format.H5Dataset(path) as ds:
        np.testing.assert_array_equal(ds[0].fock, records[0]["fock"])
        with pytest.raises(DataError, match=r"group '0000002', dataset 'fock': stored checksum "
                                            r"[0-9a-f]{8} differs .* corrupted after it was "
                                            "written; relabel it"):
            ds[2]  # pylint: disable=pointless-statement
    with h5format.H5Dataset(path, verify=False) as ds:
        assert ds[2].fock[0, 3] == records[2]["fock"][0, 3] + 1e-9
    # Label attrs are covered too.
    with h5py.File(path, "r+") as f:
        f["0000001"].attrs["charge"] = 2
    with h5format.H5Dataset(path) as ds, pytest.raises(DataError, match="dataset '@attrs'"):
        ds[1]  # pylint: disable=pointless-statement


def test_files_without_checksums_still_read(native):
    path, records = native
    with h5py.File(path, "r+") as f:
        for key in f:
            del f[key].attrs[h5format.CHECKSUM_ATTR]
        f["0000000"].create_dataset("mo_energy", data=np.arange(7.0))  # added after writing
    with h5format.H5Dataset(path) as ds:
        for i, r in enumerate(records):
            np.testing.assert_array_equal(ds[i].fock, r["fock"])
        np.testing.assert_array_equal(ds[0].extras["mo_energy"], np.arange(7.0))


def test_wrong_dtype_and_missing_native_dataset(native):
    path, _ = native
    with h5py.File(path, "r+") as f:
        del f["0000000"]["fock"]
        f["0000000"].create_dataset("fock", data=np.bytes_("junk"))
        del f["0000001"]["overlap"]
    with h5format.H5Dataset(path, verify=False) as ds:
        with pytest.raises(DataError, match=r"0000000/fock: expected a numeric dataset, found "
                                            "dtype"):
            ds[0]  # pylint: disable=pointless-statement
        with pytest.raises(DataError, match=r"required dataset\(s\) \['overlap'\] missing"):
            ds[1]  # pylint: disable=pointless-statement
