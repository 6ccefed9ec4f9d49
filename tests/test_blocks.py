"""Full matrix <-> padded blocks <-> irreps: exact round trips and equivariance."""

import numpy as np
import pytest

from helm_jax import basis, blocks, sph
from equivariance_checks import assert_equivariant, random_rotation, rotate_vectors
import molecules

OMOL = basis.make_template(basis.OMOL_CSH_ELEMENTS, "def2-tzvpd", "def2-tzvpd")


def _all_pairs(n):
    s, r = np.nonzero(~np.eye(n, dtype=bool))
    return s, r


def _overlap(symbols, coords, basis_name, ecp=None):
    return molecules.pyscf_mol(symbols, coords, basis_name, ecp).intor("int1e_ovlp")


@pytest.fixture(scope="module")
def ethanol():
    symbols, coords = molecules.ETHANOL
    z = [basis.atomic_number(s) for s in symbols]
    t = basis.make_template(z, "def2-svp")
    h = _overlap(symbols, coords, "def2-svp")
    h = h + np.random.default_rng(0).normal(size=h.shape) * 0.1
    return z, t, (h + h.T) / 2


def test_full_blocks_full_round_trip_is_exact(ethanol):
    z, t, h = ethanol
    s, r = _all_pairs(len(z))
    node, edge = blocks.full_to_blocks(h, z, t, s, r)
    assert node.shape == (9, 14, 14) and edge.shape == (72, 14, 14)
    np.testing.assert_array_equal(blocks.blocks_to_full(node, edge, z, t, s, r), h)
    node_mask, edge_mask = blocks.block_masks(z, t, s, r)
    assert node_mask.sum() + edge_mask.sum() == h.size
    assert np.all(node[~node_mask] == 0) and np.all(edge[~edge_mask] == 0)


def test_full_blocks_round_trip_with_ecp_and_omol_template():
    symbols, coords = molecules.METHYL_IODIDE
    z = [basis.atomic_number(s) for s in symbols]
    h = _overlap(symbols, coords, "def2-tzvpd", "def2-tzvpd")
    s, r = _all_pairs(len(z))
    node, edge = blocks.full_to_blocks(h, z, OMOL, s, r)
    np.testing.assert_array_equal(blocks.blocks_to_full(node, edge, z, OMOL, s, r), h)
    # Edge block e is H[sender AOs, receiver AOs] in template slots.
    sl = basis.molecule_ao_slices(z, "def2-tzvpd", "def2-tzvpd")
    e = 0
    amap_s, amap_r = OMOL.ao_map(z[s[e]]), OMOL.ao_map(z[r[e]])
    np.testing.assert_array_equal(edge[e][np.ix_(amap_s, amap_r)], h[sl[s[e]], sl[r[e]]])


def test_missing_edges_assemble_to_zero(ethanol):
    z, t, h = ethanol
    s, r = np.array([0, 1]), np.array([1, 0])
    node, edge = blocks.full_to_blocks(h, z, t, s, r)
    full = blocks.blocks_to_full(node, edge, z, t, s, r)
    sl = basis.molecule_ao_slices(z, "def2-svp")
    np.testing.assert_array_equal(full[sl[0], sl[1]], h[sl[0], sl[1]])
    assert np.all(full[sl[0], sl[2]] == 0)


@pytest.mark.parametrize("template", [OMOL, basis.make_template("HCNO", "def2-svp")],
                         ids=["omol", "svp"])
def test_irreps_round_trip_is_exact(template):
    rng = np.random.default_rng(1)
    a = template.n_ao
    x = rng.normal(size=(5, a, a))
    layout = blocks.irreps_layout(template)
    assert layout.dim == a * a
    y = layout.blocks_to_irreps(x)
    assert np.abs(layout.irreps_to_blocks(y) - x).max() < 1e-12
    # Orthogonal map: block norms are preserved.
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1),
                               np.linalg.norm(x.reshape(5, -1), axis=-1), rtol=1e-12)
    sym = x + np.swapaxes(x, -1, -2)
    reduced = blocks.irreps_layout(template, reduced=True)
    assert reduced.dim == a * (a + 1) // 2
    yr = reduced.blocks_to_irreps(sym)
    assert np.abs(reduced.irreps_to_blocks(yr) - sym).max() < 1e-12
    assert np.abs(reduced.expand_reduced(yr) - layout.blocks_to_irreps(sym)).max() < 1e-12


def test_omol_irreps_multiplicities_match_design():
    assert blocks.irreps_layout(OMOL).irreps == (
        "114x0e + 229x1o + 239x2e + 161x3o + 73x4e + 24x5o + 4x6e")


def test_irreps_of_rotated_blocks_equal_wigner_rotated_irreps():
    symbols, coords = molecules.WATER  # def2-TZVPD: s, p, d, f shells -> l3 up to 6
    z = [basis.atomic_number(s) for s in symbols]
    s, r = _all_pairs(len(z))
    layout = blocks.irreps_layout(OMOL)

    def irreps_by_l(c):  # list over l of [blocks, mul, 2l+1]
        node, edge = blocks.full_to_blocks(_overlap(symbols, c, "def2-tzvpd"), z, OMOL, s, r)
        return layout.split_by_l(layout.blocks_to_irreps(np.concatenate([node, edge])))

    assert_equivariant(irreps_by_l, coords, rotate_vectors,
                       lambda rot, by_l: [x @ sph.e3nn_wigner(l, rot).T
                                          for l, x in enumerate(by_l)],
                       rotations=[random_rotation(11)], atol=1e-10)


def test_valid_mask_marks_element_pair_components():
    t = basis.make_template(["H", "O"], "def2-svp")
    layout = blocks.irreps_layout(t)
    node, _ = blocks.block_masks([1], t, np.zeros(0, int), np.zeros(0, int))
    # A component is valid exactly when its block support is valid: compare through the map.
    valid = layout.valid_mask(t.slot_mask("H"), t.slot_mask("H"))
    ones = layout.irreps_to_blocks(valid.astype(float))
    assert np.all((np.abs(ones) > 1e-12) <= node[0])
    assert valid.sum() == t.ao_mask("H").sum() ** 2


def test_jax_path_matches_numpy():
    import jax
    import jax.numpy as jnp
    t = basis.make_template("HCNO", "def2-svp")
    layout = blocks.irreps_layout(t, reduced=True)
    x = np.random.default_rng(2).normal(size=(3, 14, 14))
    x = x + np.swapaxes(x, 1, 2)
    with jax.enable_x64(True):
        y = jax.jit(layout.blocks_to_irreps)(jnp.asarray(x))
        back = jax.jit(layout.irreps_to_blocks)(y)
        np.testing.assert_allclose(np.asarray(y), layout.blocks_to_irreps(x), atol=1e-12)
        np.testing.assert_allclose(np.asarray(back), x, atol=1e-12)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((10, 10)), "has 72 AOs"),
    (np.zeros((72, 71)), "square"),
    (np.triu(np.ones((72, 72))), "not symmetric"),
])
def test_clear_errors_for_bad_matrices(ethanol, bad, match):
    z, t, _ = ethanol
    s, r = _all_pairs(len(z))
    with pytest.raises(ValueError, match=match):
        blocks.full_to_blocks(bad, z, t, s, r)
