"""Block-sparse predicted Hamiltonians (helm_jax/sparse_hamiltonian.py): equal to the dense
assembly, incremental and order-free, exact file round trips, the Predictor's automatic
switch and dense limit, and graph building at 10,000 atoms (k-d tree edges equal to the
dense distance-matrix rule)."""

import time
import tracemalloc

import h5py
import jax
import numpy as np
import pytest
import scipy.sparse as sp

import molecules
import trainlib
from helm_jax import basis, blocks, checkpoint, predict, pyscf_metrics
from helm_jax import sparse_hamiltonian as shl
from helm_jax.configs import base
from helm_jax.data import batching, geometry, graphs, h5format, water_box
from helm_jax.data import statistics as stats_lib
from helm_jax.data.records import DataError, Record
from helm_jax.model import assemble, helm

ELEMENTS = (1, 6, 7, 8, 16)
TEMPLATE = basis.make_template(ELEMENTS, "def2-svp")  # 4s3p1d, A = 18
CUTOFF = 4.0


def _molecule(n_atoms, seed, box=6.0):
    """Random atoms of H, C, N, O, S at least 0.9 A apart (partly beyond the cutoff)."""
    rng = np.random.default_rng(seed)
    xyz = []
    while len(xyz) < n_atoms:
        p = rng.uniform(0, box, 3)
        if all(np.linalg.norm(p - q) > 0.9 for q in xyz):
            xyz.append(p)
    return rng.choice(ELEMENTS, size=n_atoms).astype(np.int32), np.array(xyz)


def _stats(node_layout, seed=1):
    """Statistics with non-trivial per-element l = 0 means and standard deviations."""
    rng = np.random.default_rng(seed)
    mul0 = node_layout.muls[0]
    return stats_lib.Statistics(node_mean=rng.normal(size=(119, mul0)),
                                node_std=rng.uniform(0.5, 2.0, (119, mul0)),
                                energy_ref=np.zeros(119), energy_std=1.0, n_molecules=1)


def _case(n_atoms=24, seed=0, reduced=True, with_stats=True):
    """A molecule, its edges, random model outputs and the dense assembly of them."""
    z, xyz = _molecule(n_atoms, seed)
    s, r = graphs.radius_edges(xyz, CUTOFF)
    node_layout, edge_layout = graphs.layouts_for(TEMPLATE, reduced)
    stats = _stats(node_layout) if with_stats else None
    rng = np.random.default_rng(seed + 100)
    node_y = rng.normal(size=(n_atoms, node_layout.dim))
    edge_y = rng.normal(size=(len(s), edge_layout.dim))
    return dict(z=z, s=s, r=r, node_layout=node_layout, edge_layout=edge_layout, stats=stats,
                node_y=node_y, edge_y=edge_y)


def _dense(c, keep=None):
    """The dense path (blocks.blocks_to_full with the de-standardised node irreps)."""
    keep = np.ones(len(c["s"]), bool) if keep is None else keep
    phys = assemble.node_irreps_to_physical(c["node_y"], c["z"], c["node_layout"], c["stats"])
    return blocks.blocks_to_full(c["node_layout"].irreps_to_blocks(phys),
                                 c["edge_layout"].irreps_to_blocks(c["edge_y"][keep]),
                                 c["z"], TEMPLATE, c["s"][keep], c["r"][keep], symmetrize=True)


def _builder(c):
    return shl.SparseHamiltonianBuilder(c["z"], TEMPLATE, c["node_layout"], c["edge_layout"],
                                        c["stats"])


def _max_diff(a, b) -> float:
    a = a.toarray() if sp.issparse(a) else np.asarray(a)
    b = b.toarray() if sp.issparse(b) else np.asarray(b)
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


# -- assembly ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduced,with_stats,seed", [(True, True, 0), (False, None, 1),
                                                     (True, None, 2)])
def test_sparse_equals_the_dense_assembly(reduced, with_stats, seed):
    c = _case(seed=seed, reduced=reduced, with_stats=bool(with_stats))
    assert len(set(c["z"].tolist())) >= 4
    dense = _dense(c)
    h = shl.assemble_sparse(c["z"], TEMPLATE, c["node_layout"], c["edge_layout"], c["stats"],
                            c["node_y"], c["s"], c["r"], c["edge_y"])
    assert isinstance(h, sp.csr_matrix) and h.shape == dense.shape
    assert h.shape[0] == basis.molecule_n_ao(c["z"], "def2-svp")
    assert _max_diff(h, dense) < 1e-12
    h.check_format(full_check=True)
    assert h.has_canonical_format and h.indices.dtype == np.int32
    # Stored: exactly the blocks of the atoms and of the atom pairs within the cutoff.
    n_ao = np.array([TEMPLATE.element(zi).n_ao for zi in c["z"]])
    assert h.nnz == int((n_ao ** 2).sum() + (n_ao[c["s"]] * n_ao[c["r"]]).sum())
    assert np.abs(dense).min() == 0.0  # some pairs are beyond the cutoff: a sparse pattern
    assert h.nnz < dense.size
    assert _max_diff(h, h.T) == 0.0


def test_chunks_shuffled_edges_and_one_sided_edges_give_the_same_matrix():
    c = _case(n_atoms=30, seed=3)
    full = shl.assemble_sparse(c["z"], TEMPLATE, c["node_layout"], c["edge_layout"],
                               c["stats"], c["node_y"], c["s"], c["r"], c["edge_y"])
    rng = np.random.default_rng(4)
    b = _builder(c)
    perm = rng.permutation(len(c["s"]))
    for part in np.array_split(perm, 7):  # 7 shuffled chunks
        b.add_edges(c["s"][part], c["r"][part], c["edge_y"][part].astype(np.float32)
                    .astype(np.float64))
    atoms = rng.permutation(len(c["z"]))
    b.add_nodes(c["node_y"][atoms[:11]], atoms=atoms[:11])  # nodes in two chunks, any order
    b.add_nodes(c["node_y"][atoms[11:]], atoms=atoms[11:])
    assert b.n_edges == len(c["s"])
    chunked = b.to_csr()
    c32 = dict(c, edge_y=c["edge_y"].astype(np.float32).astype(np.float64))
    assert _max_diff(chunked, _dense(c32)) < 1e-12
    one_call = shl.assemble_sparse(c["z"], TEMPLATE, c["node_layout"], c["edge_layout"],
                                   c["stats"], c["node_y"], c["s"], c["r"], c32["edge_y"])
    assert _max_diff(chunked, one_call) < 1e-12
    np.testing.assert_array_equal(chunked.indptr, one_call.indptr)
    np.testing.assert_array_equal(chunked.indices, one_call.indices)
    assert np.array_equal(b.to_csr().data, chunked.data)  # to_csr can be called again
    assert _max_diff(full, _dense(c)) < 1e-12
    # Only one direction of some pairs: (B_ij + 0) / 2, as the dense path gives.
    keep = rng.random(len(c["s"])) < 0.7
    b = _builder(c)
    b.add_nodes(c["node_y"])
    b.add_edges(c["s"][keep], c["r"][keep], c["edge_y"][keep])
    assert _max_diff(b.to_csr(release=True), _dense(c, keep)) < 1e-12
    with pytest.raises(ValueError, match="already consumed"):
        b.to_csr()


def test_batch_to_sparse_equals_batch_to_full():
    spec = graphs.GraphSpec(TEMPLATE, CUTOFF)
    gs = [graphs.build_graph(Record(elements=z, coords=x), spec, with_labels=False)
          for z, x in (_molecule(7, 5, box=4.0), _molecule(12, 6))]
    n, e = sum(g.n_node for g in gs), sum(g.n_edge for g in gs)
    batch = batching.pad_batch(gs, batching.Budget(n + 3, e + 5, 3), None, None)
    rng = np.random.default_rng(7)
    out = {"node_h": rng.normal(size=(n + 3, spec.node_layout.dim)).astype(np.float32),
           "edge_h": rng.normal(size=(e + 5, spec.edge_layout.dim)).astype(np.float32)}
    layouts = (spec.node_layout, spec.edge_layout, _stats(spec.node_layout))
    dense = assemble.batch_to_full(out, batch, *layouts)
    sparse = shl.batch_to_sparse(out, batch, *layouts)
    assert len(sparse) == len(dense) == 2
    for h, d in zip(sparse, dense):
        assert _max_diff(h, d) < 1e-12
    assert shl.batch_to_sparse(out, batch, *layouts, select=[False, True])[0] is None
    with pytest.raises(ValueError, match="not spin-resolved"):
        shl.batch_to_sparse(out, batch, *layouts, spin="beta")


def test_bad_input_is_refused_with_a_clear_error():
    c = _case(n_atoms=8, seed=8)
    nl, el = c["node_layout"], c["edge_layout"]
    with pytest.raises(ValueError, match=r"Element Cl \(Z=17\) is not in this template"):
        shl.SparseHamiltonianBuilder([1, 17], TEMPLATE, nl, el)
    other = basis.make_template([1, 8], "def2-svp")
    with pytest.raises(ValueError, match="node_layout belongs to template"):
        shl.SparseHamiltonianBuilder([1, 8], TEMPLATE, blocks.irreps_layout(other), el)
    with pytest.raises(ValueError, match="edge_layout is reduced"):
        shl.SparseHamiltonianBuilder([1, 8], TEMPLATE, nl, blocks.irreps_layout(TEMPLATE, True))
    b = _builder(c)
    with pytest.raises(ValueError, match=rf"expected \[8, {nl.dim}\]"):
        b.add_nodes(c["node_y"][:, :-1])
    with pytest.raises(ValueError, match=rf"\[E, {el.dim}\]"):
        b.add_edges(c["s"], c["r"], c["edge_y"][:, :5])
    with pytest.raises(ValueError, match="do not match"):
        b.add_edges(c["s"][:-1], c["r"], c["edge_y"])
    with pytest.raises(ValueError, match="outside 0..7.*batch offset"):
        b.add_edges(c["s"] + 3, c["r"], c["edge_y"])
    with pytest.raises(ValueError, match="self-edge"):
        b.add_edges([2], [2], c["edge_y"][:1])
    with pytest.raises(ValueError, match="integer atom indices"):
        b.add_edges(c["s"] + 0.5, c["r"], c["edge_y"])
    b.add_edges(c["s"], c["r"], c["edge_y"])
    with pytest.raises(ValueError, match="8 atom.*no node irreps.*add_nodes"):
        b.to_csr()
    b.add_nodes(c["node_y"][:3], atoms=[0, 1, 2])
    with pytest.raises(ValueError, match="atom twice"):
        b.add_nodes(c["node_y"][:1], atoms=[1])
    b.add_nodes(c["node_y"][3:], atoms=np.arange(3, 8))
    b.add_edges(c["s"][4:5], c["r"][4:5], c["edge_y"][4:5])  # again, in another chunk
    with pytest.raises(ValueError, match=rf"edge {c['s'][4]} -> {c['r'][4]} was added more "
                                         "than once"):
        b.to_csr()


# -- files ---------------------------------------------------------------------------------


def _csr_case():
    c = _case(n_atoms=16, seed=9)
    return c, shl.assemble_sparse(c["z"], TEMPLATE, c["node_layout"], c["edge_layout"],
                                  c["stats"], c["node_y"], c["s"], c["r"], c["edge_y"])


def _same_csr(a, b):
    assert a.shape == b.shape
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_npz_round_trip_is_exact(tmp_path):
    c, h = _csr_case()
    path = str(tmp_path / "h.npz")
    meta = {"elements": c["z"], "basis": "def2-svp", "ecp": "", "spin": "alpha"}
    shl.save_npz(path, h, meta)
    back, got = shl.load_npz(path)
    _same_csr(back, h)
    assert got["basis"] == "def2-svp" and got["spin"] == "alpha"
    assert got["elements"].dtype == c["z"].dtype
    np.testing.assert_array_equal(got["elements"], c["z"])
    _same_csr(sp.load_npz(path).tocsr(), h)  # scipy reads the same file
    shl.save_npz(str(tmp_path / "z.npz"), h, compressed=True)
    _same_csr(shl.load_npz(str(tmp_path / "z.npz"))[0], h)
    with pytest.raises(TypeError, match="scipy sparse matrix"):
        shl.save_npz(path, h.toarray())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        shl.load_npz(str(tmp_path / "missing.npz"))


def _write(path, c, fock, fock_beta=None, overlap=None):
    with h5py.File(path, "w") as f:
        h5format.write_file_attrs(f, {"method": "test", "basis": "def2-svp", "ecp": ""})
        h5format.write_structure(
            f, h5format.group_key(0), elements=c["z"], coords=np.zeros((len(c["z"]), 3)),
            fock=fock, overlap=overlap, energy=-1.0, charge=0, spin=0, n_electrons=2,
            converged=True, scf_cycles=0, source="test", fock_beta=fock_beta)


def test_hdf5_round_trip_is_exact_and_dense_files_are_unchanged(tmp_path):
    c, h = _csr_case()
    n_ao = h.shape[0]
    nao = lambda z: basis.molecule_n_ao(z, "def2-svp")  # noqa: E731
    path = str(tmp_path / "sparse.h5")
    _write(path, c, h, fock_beta=2 * h)  # no overlap beside a sparse fock
    with h5py.File(path) as f:
        g = f["0000000"]
        assert sorted(g["fock_csr"]) == ["data", "indices", "indptr", "shape"]
        assert "fock" not in g and "overlap" not in g
    r = h5format.H5Dataset(path, expected_nao=nao)[0]
    assert isinstance(r.fock, sp.csr_matrix) and isinstance(r.fock_beta, sp.csr_matrix)
    _same_csr(r.fock, h)
    _same_csr(r.fock_beta, 2 * h)
    assert r.overlap is None and r.extras == {}
    # Dense files: as before (packed fock, ndarray back).
    dense_path = str(tmp_path / "dense.h5")
    _write(dense_path, c, h.toarray(), overlap=np.eye(n_ao))
    with h5py.File(dense_path) as f:
        assert sorted(f["0000000"]) == ["coords", "elements", "energy", "fock", "overlap"]
    r = h5format.H5Dataset(dense_path, expected_nao=nao)[0]
    assert isinstance(r.fock, np.ndarray) and np.array_equal(r.fock, h.toarray())
    with pytest.raises(ValueError, match="overlap=None is only allowed beside a sparse fock"):
        _write(str(tmp_path / "bad.h5"), c, h.toarray())
    # Checksums cover the CSR datasets; a wrong AO count or broken indices are errors.
    with h5py.File(path, "a") as f:
        f["0000000/fock_csr/data"][0] += 1.0
    with pytest.raises(DataError, match="fock_csr/data.*stored checksum"):
        h5format.H5Dataset(path, expected_nao=nao)[0]
    with pytest.raises(DataError, match=f"a {n_ao}x{n_ao} matrix but .* {n_ao + 1} AOs"):
        h5format.H5Dataset(path, expected_nao=n_ao + 1, verify=False)[0]
    with h5py.File(path, "a") as f:
        f["0000000/fock_csr/indices"][0] = n_ao + 5
    with pytest.raises(DataError, match="not a valid CSR matrix"):
        h5format.H5Dataset(path, verify=False)[0]


# -- Predictor -----------------------------------------------------------------------------

T631 = basis.make_template("HCO", "6-31g")
CH3 = (["C", "H", "H", "H"],
       np.array([[0.0, 0.0, 0.05], [1.079, 0.0, -0.02], [-0.5395, 0.9344, -0.02],
                 [-0.5395, -0.9344, -0.02]]))
H2CO = (["C", "O", "H", "H"],
        np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.21], [0.0, 0.94, -0.58], [0.0, -0.94, -0.58]]))


@pytest.fixture(scope="module")
def loaded():
    """An untrained spin-resolved (sum_diff) 6-31G model with random l = 0 node references
    (no labelling, one small compilation)."""
    c = base.get_config()
    c.model.update(channels=8, num_layers=1, l_max=2, m_max=2, num_rbf=8,
                   edge_channels_hidden=8, ffn_channels=8, cutoff=5.0,
                   charge_spin_embedding=True)
    c.heads.update(hidden=16, energy_hidden=16, spin="sum_diff")
    spec = graphs.GraphSpec(T631, 5.0, spin_resolved=True, charge_spin_embedding=True)
    stats = stats_lib.compute_statistics([], spec.node_layout, edge_layout=spec.edge_layout)
    stats.node_mean = _stats(spec.node_layout).node_mean
    model = helm.build_model(c, T631, stats)
    g = graphs.build_graph(Record(elements=[6, 1, 1, 1], coords=CH3[1]), spec,
                           with_labels=False)
    batch = batching.pad_batch([g], batching.Budget(5, 16, 2), None, None)
    inputs = helm.batch_inputs(batch)
    n_graphs = inputs.pop("num_graphs")
    params = jax.jit(lambda k, i: model.init(k, **i, num_graphs=n_graphs))(
        jax.random.PRNGKey(0), inputs)["params"]
    return checkpoint.LoadedModel(config=c, template=T631, stats=stats, params=params,
                                  step=0, meta={})


@pytest.fixture(scope="module")
def predictor(loaded):
    """One Predictor for every test (its compiled programs are reused); tests set its
    thresholds and restore them."""
    p = predict.Predictor(loaded)
    yield p
    p.sparse_above_ao, p.dense_limit_ao = predict.SPARSE_ABOVE_AO, predict.DENSE_LIMIT_AO


def test_predictor_switches_to_csr_above_the_threshold(predictor):
    p = predictor
    water = molecules.pyscf_mol(*molecules.WATER, "6-31g")  # 13 AOs
    h2co = molecules.pyscf_mol(*H2CO, "6-31g")  # 22 AOs
    ch3 = molecules.pyscf_mol(*CH3, "6-31g", spin=1)  # 15 AOs, open shell
    mols = [water, h2co, ch3]  # h2co and ch3 share a batch
    ref = p.predict_hamiltonian(mols)  # default threshold (4096 AOs): all dense
    assert all(isinstance(h, np.ndarray) for h in ref) and ref[2].shape == (2, 15, 15)
    p.sparse_above_ao = 20
    got = p.predict_hamiltonian(mols)  # automatic: h2co sparse, the others dense
    assert isinstance(got[0], np.ndarray) and np.array_equal(got[0], ref[0])
    assert isinstance(got[1], sp.csr_matrix) and _max_diff(got[1], ref[1]) < 1e-12
    assert isinstance(got[2], np.ndarray) and _max_diff(got[2], ref[2]) < 1e-12
    assert _max_diff(got[2][0], got[2][1]) > 1e-6  # alpha != beta
    forced = p.predict_hamiltonian(mols, sparse=True)
    assert all(isinstance(forced[k], sp.csr_matrix) for k in (0, 1))
    assert _max_diff(forced[0], ref[0]) < 1e-12
    assert isinstance(forced[2], tuple) and len(forced[2]) == 2  # open shell: (alpha, beta)
    for k in range(2):
        assert isinstance(forced[2][k], sp.csr_matrix)
        assert _max_diff(forced[2][k], ref[2][k]) < 1e-12
    dense = p.predict_hamiltonian(mols, sparse=False)
    assert all(isinstance(h, np.ndarray) for h in dense) and _max_diff(dense[1], ref[1]) < 1e-12
    assert p.n_ao(h2co) == 22
    p.sparse_above_ao = predict.SPARSE_ABOVE_AO


def test_dense_limit_gives_a_clear_error(loaded, predictor):
    with pytest.raises(ValueError, match="sparse_above_ao=20 is above dense_limit_ao=12"):
        predict.Predictor(loaded, sparse_above_ao=20, dense_limit_ao=12)
    p = predictor
    water = molecules.pyscf_mol(*molecules.WATER, "6-31g")  # 13 AOs
    assert p.initial_guess(water).shape == (13, 13)
    p.sparse_above_ao, p.dense_limit_ao = 10, 12
    try:
        with pytest.raises(ValueError, match=r"initial guess .*13 AOs.*dense limit of 12 AOs.*"
                                             r"Predictor\(dense_limit_ao=...\).*sparse"):
            p.initial_guess(water)
        with pytest.raises(ValueError, match="sparse=False.*dense limit of 12 AOs"):
            p.predict_hamiltonian(water, sparse=False)
        assert isinstance(p.predict_hamiltonian(water), sp.csr_matrix)
    finally:
        p.sparse_above_ao, p.dense_limit_ao = predict.SPARSE_ABOVE_AO, predict.DENSE_LIMIT_AO


def test_write_predictions_stores_large_structures_sparse(predictor, tmp_path):
    p = predictor
    p.max_molecules = 1  # one molecule per batch: the program compiled for water alone
    frames = geometry.read_structures(trainlib.WATER_XYZ)
    h = p.predict_hamiltonian([Record(elements=f.elements, coords=f.coords) for f in frames],
                              sparse=True)[3]
    p.sparse_above_ao = 10  # every water frame (13 AOs) sparse
    try:
        out = str(tmp_path / "pred.h5")
        assert predict.write_predictions(p, trainlib.WATER_XYZ, out) == 8
        r = h5format.H5Dataset(out)[3]
        _same_csr(r.fock, h)
        np.testing.assert_allclose(r.extras["mo_energy"],
                                   pyscf_metrics.orbitals(h.toarray(), r.overlap)[0],
                                   atol=1e-12)
        # Above the dense limit: no overlap, no orbital energies (they need dense matrices).
        p.dense_limit_ao = 12
        out = str(tmp_path / "big.h5")
        predict.write_predictions(p, trainlib.WATER_XYZ, out)
        r = h5format.H5Dataset(out)[3]
        _same_csr(r.fock, h)
        assert r.overlap is None and "mo_energy" not in r.extras
    finally:
        p.sparse_above_ao, p.dense_limit_ao = predict.SPARSE_ABOVE_AO, predict.DENSE_LIMIT_AO
        p.max_molecules = 16


# -- graphs at 10,000 atoms ----------------------------------------------------------------


def _dense_radius_edges(coords, cutoff):
    """The former O(n^2) rule of graphs.radius_edges."""
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    s, r = np.nonzero((d < cutoff) & ~np.eye(len(coords), dtype=bool))
    return s.astype(np.int32), r.astype(np.int32)


def test_kd_tree_edges_equal_the_dense_rule():
    rng = np.random.default_rng(10)
    cases = [(rng.uniform(-4, 4, (int(rng.integers(1, 50)), 3)), float(rng.uniform(0.5, 6)))
             for _ in range(60)]
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3), -1).reshape(-1, 3)
    # Distances exactly at the cutoff (1, sqrt 2), no cutoff, none within it.
    cases += [(grid, 1.0), (grid, np.sqrt(2.0)), (grid * 0.1, 0.1), (grid, np.inf),
              (grid, 0.0), (grid[:1], 5.0), (molecules.ETHANOL[1], 5.0),
              (cases[0][0].astype(np.float32), cases[0][1]), (grid.astype(np.float32), 1.0)]
    for coords, cutoff in cases:
        want, got = _dense_radius_edges(coords, cutoff), graphs.radius_edges(coords, cutoff)
        for a, b in zip(want, got):
            assert a.dtype == b.dtype and np.array_equal(a, b), (len(coords), cutoff)


def test_overlapping_atoms_are_reported_as_before():
    xyz = np.array([[0.0, 0, 0], [3.0, 0, 0], [0.05, 0, 0], [3.0, 0.05, 0], [6.0, 0, 0]])
    with pytest.raises(ValueError, match=r"atoms 0 and 2 are 0.0500 A apart"):  # first tie
        geometry.check_geometry([1] * 5, xyz)
    xyz[2, 0] = 0.07
    with pytest.raises(ValueError, match=r"atoms 1 and 3 are 0.0500 A apart"):  # closest
        geometry.check_geometry([1] * 5, xyz)
    xyz[2, 0] = xyz[3, 1] = 0.5
    geometry.check_geometry([1] * 5, xyz)


def test_a_10000_atom_water_box_graph_takes_seconds_and_linear_memory():
    record = water_box.water_box(3333)
    assert record.n_atoms == 9999 and record.key == "water_box_3333"
    extent = record.coords[::3].max(0) - record.coords[::3].min(0)
    assert np.allclose(extent, 14 * water_box.lattice_spacing(), atol=1e-9)  # 15^3 sites
    spec = graphs.GraphSpec(basis.make_template([1, 8], "def2-svp"), 5.0)
    tracemalloc.start()
    t0 = time.perf_counter()
    g = graphs.build_graph(record, spec, with_labels=False)  # geometry checks included
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 400_000 < g.n_edge < 600_000  # ~48 neighbours per atom at 1 g/cm^3
    assert seconds < 20, seconds  # about 0.3 s; a dense distance matrix took minutes
    # A dense [n, n, 3] difference array alone would be 2.4 GB.
    assert peak < 200 * 2 ** 20, peak / 2 ** 20
    np.testing.assert_array_equal(np.diff(g.senders.astype(np.int64) * g.n_node + g.receivers)
                                  > 0, True)  # row-major order
