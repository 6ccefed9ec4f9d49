"""Fuzz test of the project HDF5 reader: a corrupted file reads correctly or raises DataError.

A small labelled file (water and methane, def2-SVP-sized random symmetric Fock/overlap, forces,
an ``ao_dipole`` extra) is corrupted in seeded ways: truncation, random bytes overwritten
anywhere or inside a dataset's data, NaN/Inf written into each dataset, datasets with a wrong
shape or dtype, missing datasets, changed attrs. Each corrupted copy is opened with
``readers.open_dataset`` and every record is read: each read must return exactly what was
written or raise ``DataError``; any other exception, a lost record or a silently different
value fails. The structural corruptions are also applied to a copy without checksums (a
file written before they existed), which must not read wrong values either, except those that
leave a valid file (`LEGACY_VALID`: a structure without forces is legitimate, a charge of 2 is
consistent with water): only checksums tell those from what was written.
"""

import collections
import os
import shutil
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from helm_jax import basis as basis_lib
from helm_jax.data import h5format, readers
from helm_jax.data.records import DataError

BASIS = "def2-svp"
MOLECULES = {  # elements, coords (Angstrom)
    "water": ([8, 1, 1], [[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]]),
    "methane": ([6, 1, 1, 1, 1], [[0.0, 0.0, 0.0], [0.629, 0.629, 0.629],
                                  [-0.629, -0.629, 0.629], [-0.629, 0.629, -0.629],
                                  [0.629, -0.629, -0.629]]),
}
FLOAT_DATASETS = ("coords", "fock", "overlap", "energy", "forces", "ao_dipole")
ALL_DATASETS = ("elements",) + FLOAT_DATASETS
LEGACY_VALID = ("missing-forces", "missing-ao_dipole", "shape-ao_dipole-2d", "attr-charge",
                "attr-spin")


def _sym(rng, n):
    a = rng.normal(size=(n, n))
    return a + a.T  # [n, n]


def _structures(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, (elements, coords) in enumerate(MOLECULES.values()):
        z = np.array(elements)
        nao = basis_lib.molecule_n_ao(z, BASIS, None)
        out.append(dict(
            elements=z, coords=np.array(coords) + 0.01 * rng.normal(size=(len(z), 3)),
            fock=_sym(rng, nao), overlap=_sym(rng, nao) + nao * np.eye(nao),
            energy=-40.0 - 36.0 * i - rng.random(), forces=rng.normal(size=(len(z), 3)),
            charge=0, spin=0, n_electrons=int(z.sum()), converged=True, scf_cycles=9,
            source=f"fuzz.xyz:{i}", extras={"ao_dipole": np.stack([_sym(rng, nao)
                                                                   for _ in range(3)])}))
    return out


@pytest.fixture(name="files", scope="module")
def fixture_files(tmp_path_factory):
    """(checksummed file, the same without checksums, structures written)."""
    root = tmp_path_factory.mktemp("fuzz")
    path, legacy = str(root / "labels.h5"), str(root / "legacy.h5")
    structures = _structures()
    with h5py.File(path, "w") as f:
        h5format.write_file_attrs(f, {"method": "PBE", "basis": BASIS, "ecp": "",
                                      "grid_level": 3, "density_fit": False, "conv_tol": 1e-9})
        for i, s in enumerate(structures):
            h5format.write_structure(f, h5format.group_key(i), **s)
    shutil.copy(path, legacy)
    with h5py.File(legacy, "r+") as f:
        for key in f:
            del f[key].attrs[h5format.CHECKSUM_ATTR]
    return path, legacy, structures


def _check_read(path, structures):
    """'ok' if every record reads back exactly, 'DataError' if one raises it; else fails."""
    try:
        ds = readers.open_dataset(path)
    except DataError:
        return "DataError"
    assert ds.kind == "h5" and ds.keys == [h5format.group_key(i) for i in range(len(structures))]
    outcome = "ok"
    for i, s in enumerate(structures):
        try:
            rec = ds[i]
        except DataError:
            outcome = "DataError"
            continue
        np.testing.assert_array_equal(rec.elements, s["elements"])
        np.testing.assert_array_equal(rec.coords, s["coords"])
        np.testing.assert_array_equal(rec.fock, s["fock"])
        np.testing.assert_array_equal(rec.overlap, s["overlap"])
        np.testing.assert_array_equal(rec.forces, s["forces"])
        np.testing.assert_array_equal(rec.extras["ao_dipole"], s["extras"]["ao_dipole"])
        assert rec.energy == s["energy"] and rec.charge == s["charge"]
        assert rec.spin == s["spin"] and rec.converged == s["converged"]
    return outcome


def _data_span(path, key, name):
    """Byte offset and size of a contiguous dataset's data in the file."""
    with h5py.File(path, "r") as f:
        d = f[key][name]
        return d.id.get_offset(), d.id.get_storage_size()


def _byte_cases(path, rng):
    """Truncations and overwritten bytes (raw file edits)."""
    size = os.path.getsize(path)
    for n in range(10):
        yield f"truncate#{n}", ("truncate", int(rng.integers(1, size)))
    for n in range(20):
        yield f"overwrite-anywhere#{n}", ("overwrite", int(rng.integers(0, size - 16)),
                                         rng.bytes(int(rng.integers(1, 17))))
    for n, name in enumerate(ALL_DATASETS * 2):
        key = h5format.group_key(n % 2)
        offset, length = _data_span(path, key, name)
        at = offset + int(rng.integers(0, length))
        old = open(path, "rb").read()[at]
        yield f"overwrite-data-{key}/{name}#{n}", ("overwrite", at,
                                                   bytes([(old + rng.integers(1, 256)) % 256]))


def _structural_cases(structures):
    """Edits through h5py: (name, function(file) applying it)."""
    key = h5format.group_key(0)
    s = structures[0]

    def setter(name, index, value):
        def edit(f):
            f[key][name][index] = value
        return edit

    def replace(name, data):
        def edit(f):
            del f[key][name]
            f[key].create_dataset(name, data=data)
        return edit

    def delete(name):
        def edit(f):
            del f[key][name]
        return edit

    def set_attr(name, value):
        def edit(f):
            f[key].attrs[name] = value
        return edit

    for name in FLOAT_DATASETS:
        index = () if name == "energy" else (0,) * (2 if name in ("coords", "forces") else 1)
        if name == "ao_dipole":
            index = (1, 3)
        for value in (np.nan, np.inf, -np.inf):
            yield f"{value}-in-{name}", setter(name, index, value)
    packed = h5format.pack_upper(s["fock"])
    yield "shape-fock-short", replace("fock", packed[:-1])
    yield "shape-fock-full-matrix", replace("fock", s["fock"])
    yield "shape-overlap-other-basis", replace("overlap", h5format.pack_upper(np.eye(7)))
    yield "shape-coords-2d", replace("coords", s["coords"][:, :2])
    yield "shape-forces-extra-atom", replace("forces", np.zeros((4, 3)))
    yield "shape-elements-extra", replace("elements", np.array([8, 1, 1, 1], np.int32))
    yield "shape-energy-vector", replace("energy", np.array([s["energy"], 0.0]))
    yield "shape-ao_dipole-2d", replace("ao_dipole", packed)
    for name in ALL_DATASETS:
        yield f"missing-{name}", delete(name)
    yield "dtype-fock-string", replace("fock", np.bytes_("not a matrix"))
    yield "dtype-elements-string", replace("elements", np.array([b"O", b"H", b"H"]))
    yield "dtype-energy-vlen-string", replace("energy", "-76.0")
    yield "dtype-coords-float32", replace("coords", s["coords"].astype(np.float32))
    yield "dtype-fock-int", replace("fock", packed.astype(np.int64))
    yield "dtype-overlap-group", lambda f: (delete("overlap")(f), f[key].create_group("overlap"))
    yield "attr-charge", set_attr("charge", 2)
    yield "attr-spin", set_attr("spin", 2)
    yield "attr-checksums-garbage", set_attr(h5format.CHECKSUM_ATTR, "{not json")
    yield "attr-checksums-list", set_attr(h5format.CHECKSUM_ATTR, "[1, 2]")


def _apply_bytes(src, dst, edit):
    data = bytearray(open(src, "rb").read())
    if edit[0] == "truncate":
        data = data[:edit[1]]
    else:
        _, at, new = edit
        data[at:at + len(new)] = new
    with open(dst, "wb") as fh:
        fh.write(bytes(data))


def test_pristine_files_read_back_exactly(files):
    path, legacy, structures = files
    assert _check_read(path, structures) == "ok"
    assert _check_read(legacy, structures) == "ok"


def test_fuzz_corruptions_read_correctly_or_raise_data_error(files, tmp_path):
    path, legacy, structures = files
    rng = np.random.default_rng(20240611)
    outcomes = collections.Counter()
    failures = []
    cases = []
    for name, edit in _byte_cases(path, rng):
        category = "overwrite-data" if name.startswith("overwrite-data") else name.split("#")[0]
        cases.append((name, category, lambda dst, e=edit: _apply_bytes(path, dst, e)))
    for src, tag in ((path, ""), (legacy, "legacy-")):
        for name, edit in _structural_cases(structures):
            if tag and name in LEGACY_VALID:
                continue
            def apply(dst, src=src, edit=edit):
                shutil.copy(src, dst)
                with h5py.File(dst, "r+") as f:
                    edit(f)
            category = tag + ("nan/inf" if "-in-" in name else name.split("-")[0])
            cases.append((tag + name, category, apply))
    for n, (name, category, apply) in enumerate(cases):
        dst = str(tmp_path / f"case{n}.h5")
        apply(dst)
        try:
            outcome = _check_read(dst, structures)
        except AssertionError as err:  # a silently different value or lost record
            failures.append(f"{name}: read a wrong value without an error: {err}")
            continue
        except Exception as err:  # pylint: disable=broad-except
            failures.append(f"{name}: {type(err).__name__} instead of DataError: {err}")
            continue
        outcomes[outcome] += 1
        outcomes[f"{category}:{outcome}"] += 1
    print(f"\n{len(cases)} fuzz cases:", dict(sorted(outcomes.items())))
    assert not failures, "\n".join(failures)
    assert len(cases) >= 50
    # Every change of a checksummed dataset's bytes, value, shape or dtype is caught.
    for category in ("overwrite-data", "nan/inf", "shape", "missing", "dtype", "attr"):
        assert outcomes[f"{category}:ok"] == 0, category
