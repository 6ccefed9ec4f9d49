"""Tests of the dataset readers: each test writes a small file in a dataset's own layout,
convention and units from PySCF matrices, and reads it back through open_dataset."""

import json
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helm_jax import units
from helm_jax import basis as basis_lib  # pylint: disable=wrong-import-position
from helm_jax import conventions  # pylint: disable=wrong-import-position
from helm_jax.data import h5format, readers  # pylint: disable=wrong-import-position
from helm_jax.data.readers import schnorb  # pylint: disable=wrong-import-position
from helm_jax.data.records import DataError  # pylint: disable=wrong-import-position
from data_prep import verify  # pylint: disable=wrong-import-position
from molecules import ETHANOL, HYDROGEN_IODIDE, METHYL_IODIDE, WATER, pyscf_mol  # pylint: disable=wrong-import-position

BOHR = units.BOHR_ANGSTROM
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _labels(molecule, basis, ecp=None, seed=0):
    """PySCF data of a molecule: Z [n], coords [n, 3] A, S, pseudo-Fock H, energy, forces."""
    symbols, coords = molecule
    ecps = {x: ecp for x in symbols if ecp and basis_lib.atomic_number(x) > 36}
    mol = pyscf_mol(symbols, coords, basis, ecps)
    s = mol.intor("int1e_ovlp")
    h = s + mol.intor("int1e_kin") + mol.intor("int1e_nuc")  # pseudo-Fock [N, N]
    h = (h + h.T) / 2  # exactly symmetric, as the packed upper triangles store it
    rng = np.random.default_rng(seed)
    z = np.array([basis_lib.atomic_number(x) for x in symbols], np.int32)
    return dict(z=z, coords=np.asarray(coords, float), s=s, h=h, energy=-rng.random() * 100,
                forces=rng.normal(size=(len(z), 3)))


def _foreign(m, lab, basis, ecp, convention):
    return conventions.from_pyscf(m, lab["z"], basis, ecp, convention)


def _check(rec, lab, tol=1e-12, with_overlap=True):
    np.testing.assert_array_equal(rec.elements, lab["z"])
    np.testing.assert_allclose(rec.coords, lab["coords"], atol=tol, rtol=0)
    np.testing.assert_allclose(rec.fock, lab["h"], atol=tol, rtol=tol)
    if with_overlap:
        np.testing.assert_allclose(rec.overlap, lab["s"], atol=tol, rtol=0)


# ----------------------------------------------------------------------------- writers


def _write_omol(path, labs, spin_attr=1):
    with h5py.File(path, "w") as f:
        for name, lab in labs.items():
            g = f.create_group(name)
            g.create_dataset("elements", data=lab["z"])
            g.create_dataset("coords", data=lab["coords"])
            packed = h5format.pack_upper(_foreign(lab["h"], lab, "def2-tzvpd", "def2-tzvpd",
                                                  "omol_csh"))
            g.create_dataset("fock", data=packed)
            g.attrs.update(charge=0, spin=spin_attr)


def _write_schnorb(path, labs, convention="orca", mean=-150.0):
    import ase  # pylint: disable=import-outside-toplevel
    import ase.db  # pylint: disable=import-outside-toplevel

    db = ase.db.connect(path)
    for lab in labs:
        data = {"hamiltonian": _foreign(lab["h"], lab, "def2-svp", None, convention),
                "overlap": _foreign(lab["s"], lab, "def2-svp", None, convention),
                "energy": np.array([lab["energy"] - mean]), "forces": lab["forces"]}
        db.write(ase.Atoms(numbers=lab["z"], positions=lab["coords"]), data=data)
    db.metadata = {"mean_energy": mean}


def _write_nabladft(path, labs, coord_factor=1 / BOHR, shells=None):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE data (id INTEGER NOT NULL PRIMARY KEY, Z BLOB, R BLOB, E FLOAT, "
                 "F BLOB, H BLOB, S BLOB, C BLOB)")
    conn.execute("CREATE TABLE basisset (Z INTEGER NOT NULL PRIMARY KEY, orbitals BLOB)")
    f32 = lambda a: np.ascontiguousarray(a, np.float32).tobytes()  # noqa: E731
    for i, lab in enumerate(labs):
        conn.execute("INSERT INTO data VALUES (?,?,?,?,?,?,?,?)", (
            10 + i, lab["z"].astype(np.int32).tobytes(), f32(lab["coords"] * coord_factor),
            lab["energy"], f32(lab["forces"] * BOHR),
            f32(_foreign(lab["h"], lab, "def2-svp", None, "psi4")),
            f32(_foreign(lab["s"], lab, "def2-svp", None, "psi4")),
            f32(_foreign(lab["h"] - lab["s"], lab, "def2-svp", None, "psi4"))))
    for z in {int(x) for lab in labs for x in lab["z"]}:
        ls = (shells or {}).get(z) or conventions.foreign_shell_order(z, "def2-svp", None, "psi4")
        conn.execute("INSERT INTO basisset VALUES (?,?)", (z, np.array(ls, np.int32).tobytes()))
    conn.commit()
    conn.close()


def _write_qh9(path, entries):
    import lmdb  # pylint: disable=import-outside-toplevel

    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, (z, pos, ham) in entries.items():
            value = {"id": i, "num_nodes": len(z), "atoms": np.asarray(z, np.int32).tobytes(),
                     "pos": np.asarray(pos, np.float64).tobytes(),
                     "Ham": np.asarray(ham, np.float64).tobytes()}
            txn.put(i.to_bytes(length=4, byteorder="big"), pickle.dumps(value))
    env.close()


def _write_project(path, labs, converged):
    with h5py.File(path, "w") as f:
        h5format.write_file_attrs(f, {"method": "pbe", "basis": "def2-svp", "ecp": "",
                                      "grid_level": 3, "density_fit": False, "conv_tol": 1e-9})
        for i, (lab, ok) in enumerate(zip(labs, converged)):
            h5format.write_structure(
                f, h5format.group_key(i), elements=lab["z"], coords=lab["coords"],
                fock=lab["h"], overlap=lab["s"], energy=lab["energy"], forces=lab["forces"],
                charge=0, spin=0, n_electrons=int(lab["z"].sum()), converged=ok, scf_cycles=9,
                source=f"x.xyz:{i}")


@pytest.fixture(name="svp", scope="module")
def fixture_svp():
    return [_labels(WATER, "def2-svp", seed=0), _labels(ETHANOL, "def2-svp", seed=1)]


def _read_first(ds):
    return ds[0].fock


# ----------------------------------------------------------------------------- per dataset


def test_omol_csh_round_trip_lazy_and_picklable(tmp_path):
    labs = {name: _labels(mol, "def2-tzvpd", "def2-tzvpd", seed=k) for k, (name, mol) in
            enumerate((("hi", HYDROGEN_IODIDE), ("ch3i", METHYL_IODIDE)))}
    path = str(tmp_path / "omol_csh_1k_test_common.h5")
    _write_omol(path, labs)
    with open(path + ".keys.json", "w") as fh:
        json.dump(["ch3i", "hi"], fh)  # the reference code's list: its order defines indices
    ds = readers.open_dataset(path)
    assert isinstance(ds, readers.OmolCshReader) and ds.keys == ["ch3i", "hi"]
    assert (ds.basis, ds.ecp, ds.convention) == ("def2-tzvpd", "def2-tzvpd", "omol_csh")
    for i, name in enumerate(ds.keys):
        rec = ds[i]
        _check(rec, labs[name], with_overlap=False)
        assert rec.overlap is None and rec.energy is None and rec.spin == 0 and rec.key == name
    assert {k: v.tolist() for k, v in ds.published_splits().items()} == {"test_common": [0, 1]}
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[-1].fock, labs["hi"]["h"])
    with multiprocessing.get_context("fork").Pool(1) as pool:  # reopens in the worker
        np.testing.assert_array_equal(pool.apply(_read_first, (ds,)), labs["ch3i"]["h"])
    assert verify.main(["--data", path, "--n", "1"]) == 2  # no overlap stored


def test_schnorb_round_trip_units_and_energy(tmp_path, svp):
    path = str(tmp_path / "schnorb_hamiltonian_mix.db")
    _write_schnorb(path, svp)
    ds = readers.open_dataset(path)
    assert isinstance(ds, readers.SchNOrbReader) and len(ds) == 2 and ds.keys == ["1", "2"]
    for rec, lab in zip((ds[0], ds[1]), svp):
        _check(rec, lab)
        assert rec.energy == pytest.approx(lab["energy"], abs=1e-12)
        np.testing.assert_allclose(rec.forces, lab["forces"], atol=1e-12)
    bohr = readers.open_dataset(path, force_unit="hartree/bohr", absolute_energy=False)
    np.testing.assert_allclose(bohr[1].forces, svp[1]["forces"] / BOHR, atol=1e-12)
    assert bohr[1].energy == pytest.approx(svp[1]["energy"] + 150.0, abs=1e-12)
    with pytest.raises(ValueError, match="do not fit the 2 converged records"):
        ds.published_splits()
    with pytest.raises(ValueError, match="force_unit 'ev/a' is not one of"):
        readers.open_dataset(path, force_unit="ev/a")


def test_schnetpack_base64_arrays():
    import base64  # pylint: disable=import-outside-toplevel

    m = np.arange(6.0).reshape(2, 3)
    data = {"h": base64.b64encode(m.astype(np.float32).tobytes()).decode(),
            "_shape_h": [2, 3], "_dtype_h": "float32"}
    np.testing.assert_array_equal(schnorb._data_array(data, "h"), m)  # pylint: disable=protected-access


def test_nabladft_round_trip_and_split_file(tmp_path, svp):
    path = str(tmp_path / "train_2k.db")
    _write_nabladft(path, svp)
    ds = readers.open_dataset(path)
    assert isinstance(ds, readers.NablaDFTReader) and ds.keys == ["10", "11"]
    for rec, lab in zip((ds[0], ds[1]), svp):
        _check(rec, lab, tol=2e-6)
        assert rec.energy == pytest.approx(lab["energy"], abs=1e-12)
        np.testing.assert_allclose(rec.forces, lab["forces"], atol=1e-6)
        np.testing.assert_allclose(rec.extras["core_hamiltonian"], lab["h"] - lab["s"],
                                   atol=2e-6, rtol=1e-6)
    assert list(ds.published_splits()) == ["train_2k"]
    split = str(tmp_path / "split.npz")
    np.savez(split, train_idx=[11], test_idx=[10])
    got = readers.open_dataset(path, split_file=split).published_splits()
    assert {k: v.tolist() for k, v in got.items()} == {"train": [1], "test": [0]}
    np.savez(split, train_idx=[12])
    with pytest.raises(ValueError, match=r"names ids \[12\] not in"):
        readers.open_dataset(path, split_file=split).published_splits()
    assert verify.main(["--data", path, "--n", "2"]) == 0


def test_qh9_round_trip(tmp_path, svp):
    path = str(tmp_path / "QH9Stable.lmdb")
    _write_qh9(path, {i: (lab["z"], lab["coords"], lab["h"]) for i, lab in enumerate(svp)})
    ds = readers.open_dataset(path)
    assert isinstance(ds, readers.QH9Reader) and ds.keys == ["0", "1"] and ds.basis == "def2-svp"
    for rec, lab in zip((ds[0], ds[1]), svp):
        _check(rec, lab, with_overlap=False)
    parts = ds.published_splits("size_ood")
    assert parts["train"].tolist() == [0, 1] and parts["test"].size == 0
    assert sorted(np.concatenate(list(ds.published_splits().values())).tolist()) == [0, 1]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ds))[1].fock, svp[1]["h"])


def test_project_h5_overlap_splits_and_verify_cli(tmp_path, svp):
    path = str(tmp_path / "labels.h5")
    labs = svp + [_labels(WATER, "def2-svp", seed=k) for k in (2, 3, 4)]
    _write_project(path, labs, converged=[True, True, False, True, True])
    ds = readers.open_dataset(path)
    assert isinstance(ds, readers.ProjectH5Reader) and ds.basis == "def2-svp" and ds.ecp is None
    _check(ds[1], svp[1])
    np.testing.assert_allclose(ds[1].forces, svp[1]["forces"], atol=1e-12)
    parts = ds.splits(seed=3, sizes=(2, 1, None))
    assert [len(v) for v in parts.values()] == [2, 1, 1]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == [0, 1, 3, 4]
    again = ds.splits(seed=3, sizes={"train": 2, "val": 1, "test": None})
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    with pytest.raises(ValueError, match="at most one size may be None"):
        ds.splits(0, (None, None))
    ordered = ds.splits(sizes=(2, 1, None), order="contiguous")  # file order, converged only
    assert [ordered[k].tolist() for k in ("train", "val", "test")] == [[0, 1], [3], [4]]
    with pytest.raises(ValueError, match="split order 'sorted'"):
        ds.splits(sizes=(2, None), order="sorted")
    with pytest.raises(NotImplementedError, match="defines no split"):
        ds.published_splits()
    out = subprocess.run([sys.executable, "data_prep/verify.py", f"--data={path}", "--n=2"],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "OK: 2 records finite and symmetric; worst" in out.stdout, (
        out.stdout + out.stderr)


# ----------------------------------------------------------------------------- errors


def test_verify_names_wrong_convention_and_units(tmp_path, svp, capsys):
    wrong = str(tmp_path / "pyscf_order.db")
    _write_schnorb(wrong, svp[1:], convention="pyscf")
    assert verify.main(["--data", wrong, "--n", "1"]) == 1
    assert "in the 'pyscf' AO order" in capsys.readouterr().out
    angstrom = str(tmp_path / "angstrom.db")
    _write_nabladft(angstrom, svp[:1], coord_factor=1.0)
    assert verify.main(["--data", angstrom, "--kind", "nabladft"]) == 1
    assert "taken as Angstrom read as bohr: wrong units" in capsys.readouterr().out


def test_detection_and_file_errors(tmp_path, svp):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        readers.open_dataset(str(tmp_path / "missing.db"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a dataset")
    with pytest.raises(ValueError, match="unknown layout"):
        readers.open_dataset(str(junk))
    other = str(tmp_path / "other.db")
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match=r"SQLite tables \['t'\] match neither"):
        readers.open_dataset(other)
    with pytest.raises(ValueError, match="unknown dataset kind 'gaussian'"):
        readers.open_dataset(other, kind="gaussian")
    with pytest.raises(ValueError, match="no format='helm_jax.h5/v1' attr"):
        omol = str(tmp_path / "omol.h5")
        _write_omol(omol, {"hi": _labels(HYDROGEN_IODIDE, "def2-tzvpd", "def2-tzvpd")})
        readers.open_dataset(omol, kind="h5")
    with pytest.raises(IndexError, match="index 5 out of range for 1 records"):
        readers.open_dataset(omol)[5]  # pylint: disable=expression-not-assigned


def test_record_errors(tmp_path, svp):
    db = str(tmp_path / "eth.db")
    _write_schnorb(db, svp[1:])
    with pytest.raises(ValueError, match=r"\[1\]: fock has shape \[72, 72\] but C2H6O has 21 "
                                         r"AOs in sto-3g: the file is in another basis"):
        readers.open_dataset(db, basis="sto-3g")[0]  # pylint: disable=expression-not-assigned
    water = svp[0]
    bad_pos = water["coords"].copy()
    bad_pos[1, 2] = np.nan
    close = water["coords"].copy()
    close[2] = close[1] + [0.0, 0.0, 0.01]
    qh9 = str(tmp_path / "bad.lmdb")
    _write_qh9(qh9, {0: (water["z"], bad_pos, water["h"]), 1: (water["z"], close, water["h"]),
                     2: (water["z"], water["coords"], water["h"].ravel()[:-1])})
    ds = readers.open_dataset(qh9)
    with pytest.raises(ValueError, match=r"bad.lmdb \[0\]: non-finite coordinate .* atom 1, "
                                         "axis z"):
        ds[0]  # pylint: disable=pointless-statement
    with pytest.raises(ValueError, match=r"\[1\]: atoms 1 and 2 are 0.0100 A apart"):
        ds[1]  # pylint: disable=pointless-statement
    with pytest.raises(ValueError, match="Ham has 575 entries, not a square"):
        ds[2]  # pylint: disable=pointless-statement
    nabla = str(tmp_path / "shells.db")
    _write_nabladft(nabla, svp[:1], shells={1: [0, 1, 0]})
    with pytest.raises(ValueError, match=r"Z=1 shells l=\[0, 1, 0\], but def2-svp in Psi4 order"):
        readers.open_dataset(nabla)[0]  # pylint: disable=expression-not-assigned


def test_xyz_reader_energies_and_forces_in_hartree():
    path = os.path.join(os.path.dirname(__file__), "data", "ethanol_train_01_first12.xyz")
    ds = readers.open_dataset(path)
    assert ds.kind == "xyz" and len(ds) == 12 and ds.basis == "def2-svp"
    rec = ds[0]
    # First rMD17 ethanol frame: Energy=-4209.783455217897 eV, first force -0.7652595851791331 eV/A.
    assert rec.energy == pytest.approx(-4209.783455217897 / 27.211386245988, rel=1e-14)
    assert rec.forces[0, 0] == pytest.approx(-0.7652595851791331 / 27.211386245988, rel=1e-14)
    assert rec.fock is None and list(rec.elements) == [6, 6, 8, 1, 1, 1, 1, 1, 1]


def test_registry_maps_kinds_to_readers_and_names_them_on_unknown_kinds(tmp_path):
    assert readers.KINDS == ("h5", "omol_csh", "schnorb", "nabladft", "qh9", "xyz", "deeph", "cp2k")
    assert all(cls.kind == kind and issubclass(cls, readers.Reader)
               for kind, cls in readers.READERS.items())
    assert readers.reader_class("nabladft") is readers.NablaDFTReader
    with pytest.raises(ValueError, match="unknown dataset kind 'gaussian'") as err:
        readers.reader_class("gaussian")
    assert all(repr(kind) in str(err.value) for kind in readers.KINDS)
    path = tmp_path / "any.db"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"choose one of \('h5', 'omol_csh'"):
        readers.open_dataset(str(path), kind="cube")


def test_non_finite_and_asymmetric_labels_are_named_on_read_and_by_verify(tmp_path, svp,
                                                                         capsys):
    labs = [dict(lab) for lab in svp + svp]
    labs[1]["h"] = labs[1]["h"].copy()
    labs[1]["h"][3, 4] = np.nan
    labs[2]["forces"] = labs[2]["forces"].copy()
    labs[2]["forces"][0, 1] = np.inf
    labs[3]["energy"] = np.nan
    path = str(tmp_path / "bad.h5")
    _write_project(path, labs, converged=[True] * 4)
    ds = readers.open_dataset(path)
    _check(ds[0], svp[0])
    for i, name in ((1, "fock"), (2, "forces"), (3, "energy")):
        with pytest.raises(DataError, match=rf"{path} \[{h5format.group_key(i)}\]: dataset "
                                            rf"'{name}' holds [12] non-finite value"):
            ds[i]
    assert verify.main(["--data", path, "--n", "4"]) == 1
    out = capsys.readouterr().out
    assert all(f"FAIL record {i}" in out for i in (1, 2, 3)) and "FAIL record 0" not in out
    asym = [dict(svp[1])]  # full matrices (the project format stores one triangle)
    asym[0]["h"] = svp[1]["h"] + np.triu(np.full_like(svp[1]["h"], 1e-3), 1)
    path = str(tmp_path / "asym.db")
    _write_schnorb(path, asym)
    assert verify.main(["--data", path, "--n", "1"]) == 1
    assert "fock is not symmetric" in capsys.readouterr().out


def test_corrupt_and_malformed_files_raise_the_project_error(tmp_path, svp):
    path = tmp_path / "good.h5"
    _write_project(str(path), svp, converged=[True, True])
    data = path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated.h5: cannot be read as a dataset file .*"
                                        "truncated, corrupt or of another format"):
        readers.open_dataset(str(truncated))
    noisy = tmp_path / "noisy.h5"  # the header survives, the middle is random bytes
    rng = np.random.default_rng(0)
    noisy.write_bytes(data[:4096] + rng.bytes(len(data) - 8192) + data[-4096:])
    with pytest.raises(DataError, match="noisy.h5"):
        ds = readers.open_dataset(str(noisy))
        [ds[i] for i in range(len(ds))]
    labs = [dict(svp[0])]  # a Fock matrix of the wrong size is named as the Fock matrix
    labs[0]["h"] = np.eye(len(svp[0]["h"]) + 2)
    wrong = str(tmp_path / "wrong_fock.h5")
    _write_project(wrong, labs, converged=[True])
    n = len(svp[0]["h"])
    with pytest.raises(DataError, match=rf"0000000/fock: packed size is a {n + 2}x{n + 2} "
                                        rf"matrix but the basis of these elements has {n} AOs"):
        readers.open_dataset(wrong)[0]
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.xyz.*(holds no structures|ASE cannot parse)"):
        readers.open_dataset(str(empty))
    unknown = tmp_path / "unknown.xyz"
    unknown.write_text("2\n\nH 0 0 0\nH 0 0 0.74\n" "2\n\nXx 0 0 0\nH 0 0 0.74\n")
    with pytest.raises(DataError, match="unknown.xyz, frame 1: ASE cannot parse it .*known "
                                        "element"):
        readers.open_dataset(str(unknown))


# ----------------------------------------------------------------------------- OMol_CSH keys, spin


def _omol_labs():
    return {"hi": _labels(HYDROGEN_IODIDE, "def2-tzvpd", "def2-tzvpd", seed=0),
            "ch3i": _labels(METHYL_IODIDE, "def2-tzvpd", "def2-tzvpd", seed=1)}


def test_omol_csh_nested_groups_and_own_key_cache(tmp_path):
    labs = _omol_labs()
    path = str(tmp_path / "omol_nested.h5")
    expected = {"b/hi": labs["hi"], "a/x/ch3i": labs["ch3i"], "c": labs["hi"]}
    _write_omol(path, expected)
    with h5py.File(path, "a") as f:
        f.create_group("empty/deeper")  # groups without fock are not molecules
        f.create_dataset("meta", data=np.arange(3))
    ds = readers.open_dataset(path)
    assert ds.keys == ["a/x/ch3i", "b/hi", "c"]
    for i, name in enumerate(ds.keys):
        rec = ds[i]
        assert rec.key == name
        _check(rec, expected[name], with_overlap=False)
    assert not os.path.exists(path + ".keys.json")  # the reference's name: untouched
    own = path + ".helm_jax_keys.json"
    with open(own) as fh:
        assert json.load(fh)["keys"] == ["a/x/ch3i", "b/hi", "c"]
    assert readers.open_dataset(path).keys == ds.keys  # from the cache
    flat = str(tmp_path / "omol_flat.h5")
    _write_omol(flat, {"ch3i": labs["ch3i"], "hi": labs["hi"]})
    with open(flat + ".helm_jax_keys.json", "w") as fh:
        fh.write("not ours")  # a file this reader did not write is never overwritten
    assert readers.open_dataset(flat).keys == ["ch3i", "hi"]
    with open(flat + ".helm_jax_keys.json") as fh:
        assert fh.read() == "not ours"
    assert not os.path.exists(flat + ".keys.json")


def test_omol_csh_reference_keys_list_order_and_contiguous_split(tmp_path):
    labs = _omol_labs()
    path = str(tmp_path / "omol_csh_58k.h5")
    _write_omol(path, {f"m{k}": labs["hi" if k % 2 else "ch3i"] for k in range(6)})
    order = ["m3", "m0", "m5", "m1", "m4", "m2"]
    listed = path + ".keys.json"
    with open(listed, "w") as fh:
        json.dump(order, fh)
    with open(listed, "rb") as fh:
        before = fh.read()
    os.utime(listed, (1, 1))
    ds = readers.open_dataset(path)
    assert ds.keys == order and ds[0].key == "m3"
    np.testing.assert_array_equal(ds[1].fock, labs["ch3i"]["h"])
    parts = ds.splits(sizes={"train": 3, "val": 2, "test": None}, order="contiguous")
    assert {k: [ds.keys[i] for i in v] for k, v in parts.items()} == {
        "train": order[:3], "val": order[3:5], "test": order[5:]}
    with open(listed, "rb") as fh:
        assert fh.read() == before
    assert os.stat(listed).st_mtime == 1
    assert not os.path.exists(path + ".helm_jax_keys.json")  # the list is the key order
    with open(listed, "w") as fh:
        json.dump(["m0", "gone"], fh)
    with pytest.raises(DataError, match=r"\[gone\]: key 1 of .*keys.json is not a group"):
        readers.open_dataset(path)[1]  # pylint: disable=expression-not-assigned


@pytest.mark.parametrize("charge,attr,two_s", [
    (0, 0, 0), (0, 1, 0), (0, 2, 2), (0, 3, 2),   # HI: 26 valence electrons, 2S or 2S+1
    (1, 1, 1), (1, 2, 1), (1, 4, 3), (1, 3, 3)])  # HI+: 25 electrons
def test_omol_csh_spin_as_2s_or_multiplicity(tmp_path, charge, attr, two_s):
    path = str(tmp_path / "omol_spin.h5")
    _write_omol(path, {"hi": _omol_labs()["hi"]}, spin_attr=attr)
    with h5py.File(path, "a") as f:
        f["hi"].attrs["charge"] = charge
    rec = readers.open_dataset(path)[0]
    assert (rec.charge, rec.spin) == (charge, two_s)


@pytest.mark.parametrize("charge,attr", [(0, 28), (0, -1), (1, 0), (1, 27)])
def test_omol_csh_impossible_spin_raises(tmp_path, charge, attr):
    path = str(tmp_path / "omol_bad_spin.h5")
    _write_omol(path, {"grp/hi": _omol_labs()["hi"]}, spin_attr=attr)
    with h5py.File(path, "a") as f:
        f["grp/hi"].attrs["charge"] = charge
    with pytest.raises(DataError, match=rf"omol_bad_spin.h5 \[grp/hi\]: spin attr {attr} fits "
                                        r"neither 2S nor 2S\+1"):
        readers.open_dataset(path)[0]  # pylint: disable=expression-not-assigned
