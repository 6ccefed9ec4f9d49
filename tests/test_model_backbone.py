"""Tests of the HELM backbone and the energy head on a tiny configuration."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from helm_jax.configs import base
from helm_jax.model import backbone as backbone_lib
from helm_jax.model import energy as energy_lib
from equivariance_checks import (assert_equivariant, random_rotation, relative_error,
                                 rotate_irreps, rotate_vectors)

L_MAX = 2
SPECIES = np.array([6, 1, 8, 1, 7])
# Atoms 0 and 1 lie exactly on the polar (y) axis: edges 0->1 and 1->0 point along +-y.
POLAR_POSITIONS = np.array([
    [0.0, 0.0, 0.0],
    [0.0, 1.1, 0.0],
    [1.2, -0.4, 0.3],
    [-0.5, 0.6, 1.0],
    [0.3, 0.9, -1.1],
])
SENDERS, RECEIVERS = np.nonzero(~np.eye(len(SPECIES), dtype=bool))


def _config(**overrides):
    config = base.get_config().model
    config.update(dict(channels=8, num_layers=2, l_max=L_MAX, m_max=L_MAX, num_rbf=8,
                       cutoff=4.0, num_elements=10, edge_channels_hidden=8, ffn_channels=8))
    config.update(overrides)
    return config


class _EnergyModel(nn.Module):
    """Backbone + energy head, as ``helm_jax.model.helm`` composes them."""
    backbone: backbone_lib.HELMBackbone

    @nn.compact
    def __call__(self, species, positions, senders, receivers, node_mask, edge_mask,
                 node_graph, num_graphs, compute_edges=False):
        nodes, _ = self.backbone(species, positions, senders, receivers, node_mask, edge_mask,
                                 compute_edges=compute_edges)
        return energy_lib.EnergyHead(16, dtype=self.backbone.dtype,
                                     param_dtype=self.backbone.param_dtype, name='head')(
                                         nodes, node_mask, node_graph, num_graphs)


def _inputs(positions, species=SPECIES, senders=SENDERS, receivers=RECEIVERS,
            node_mask=None, edge_mask=None, dtype=jnp.float32):
    return dict(species=jnp.asarray(species), positions=jnp.asarray(positions, dtype),
                senders=jnp.asarray(senders), receivers=jnp.asarray(receivers),
                node_mask=jnp.ones(len(species), bool) if node_mask is None
                else jnp.asarray(node_mask),
                edge_mask=jnp.ones(len(senders), bool) if edge_mask is None
                else jnp.asarray(edge_mask))


def _rotate_features(rotation, features):
    """(nodes, edges) of the backbone rotated by a 3x3 rotation."""
    return tuple(rotate_irreps(rotation, x, L_MAX) for x in features)


def _assert_backbone_equivariant(apply, params, q0, seeds, tol, dtype=jnp.float32):
    """Nodes and edges of the generic molecule (POLAR_POSITIONS seen rotated by q0^T) rotate
    with it, relative error below ``tol``: under random rotations from ``seeds``, and under q0
    with the positions exactly POLAR_POSITIONS (edges 0->1 and 1->0 exactly on the pole)."""
    generic = _generic_positions(q0)
    rotations = {f'seed {seed}': (r, generic @ r.T)
                 for seed, r in ((seed, random_rotation(seed)) for seed in seeds)}
    rotations['q0 onto the pole'] = (q0, POLAR_POSITIONS)
    errors = assert_equivariant(
        lambda pos: apply(params, **_inputs(pos, dtype=dtype)), generic,
        lambda rotation_positions, _: rotation_positions[1],
        lambda rotation_positions, out: _rotate_features(rotation_positions[0], out),
        rotations=rotations, atol=tol, relative=True)
    print(f'{np.dtype(dtype).name} equivariance errors (absolute)', errors)


@pytest.fixture(scope='module')
def model():
    """The energy model, its parameters (edge path included) and a jitted apply."""
    module = _EnergyModel(backbone_lib.HELMBackbone.from_config(_config()))
    inputs = _inputs(POLAR_POSITIONS)
    params = jax.jit(functools.partial(module.init, compute_edges=True, num_graphs=1))(
        jax.random.PRNGKey(0), node_graph=jnp.zeros(len(SPECIES), int), **inputs)
    backbone = jax.jit(functools.partial(module.apply, method=_backbone_call))
    return module, params, backbone


def _backbone_call(module, *args, compute_edges=True, **kwargs):
    return module.backbone(*args, compute_edges=compute_edges, **kwargs)


def _generic_positions(rotation):
    """POLAR_POSITIONS = generic @ rotation^T, i.e. the polar molecule seen rotated."""
    return POLAR_POSITIONS @ rotation


def test_config_roundtrip_and_unknown_field():
    config = _config()
    module = backbone_lib.HELMBackbone.from_config(config)
    assert module.channels == 8 and module.l_max == L_MAX
    config.unknown_field = 1
    with pytest.raises(TypeError, match='unknown_field'):
        backbone_lib.HELMBackbone.from_config(config)


def test_rotation_equivariance_float32(model):
    _, params, backbone = model
    q0 = random_rotation(0)
    generic = _generic_positions(q0)
    nodes, edges = backbone(params, **_inputs(generic))
    assert nodes.shape == (5, (L_MAX + 1) ** 2, 8) and edges.shape == (20, 9, 8)
    _assert_backbone_equivariant(backbone, params, q0, (1, 2), 1e-5)


def test_rotation_equivariance_float64_truncated_m():
    with jax.enable_x64(True):
        module = backbone_lib.HELMBackbone.from_config(
            _config(dtype='float64', param_dtype='float64', num_layers=1, m_max=1))
        q0 = random_rotation(3)
        generic = _generic_positions(q0)
        params = jax.jit(module.init)(jax.random.PRNGKey(1), **_inputs(generic,
                                                                       dtype=jnp.float64))
        apply = jax.jit(module.apply)
        nodes, edges = apply(params, **_inputs(generic, dtype=jnp.float64))
        assert nodes.dtype == jnp.float64 and edges.dtype == jnp.float64
        _assert_backbone_equivariant(apply, params, q0, (4,), 1e-10, jnp.float64)


def test_translation_permutation_and_determinism(model):
    _, params, backbone = model
    inputs = _inputs(POLAR_POSITIONS)
    nodes, edges = backbone(params, **inputs)
    nodes_again, edges_again = backbone(params, **inputs)
    np.testing.assert_array_equal(nodes, nodes_again)
    np.testing.assert_array_equal(edges, edges_again)

    shifted = backbone(params, **_inputs(POLAR_POSITIONS + np.array([3.0, -1.0, 2.5])))
    assert relative_error(shifted[0], nodes) < 1e-5
    assert relative_error(shifted[1], edges) < 1e-5

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(SPECIES))  # new node i is old node perm[i]
    inverse = np.argsort(perm)
    edge_perm = rng.permutation(len(SENDERS))
    permuted = backbone(params, **_inputs(POLAR_POSITIONS[perm], SPECIES[perm],
                                          inverse[SENDERS[edge_perm]],
                                          inverse[RECEIVERS[edge_perm]]))
    assert relative_error(permuted[0], nodes[perm]) < 1e-5
    assert relative_error(permuted[1], edges[edge_perm]) < 1e-5


def _padded_inputs():
    """The polar molecule padded the jraph way: +3 nodes, +5 zero-length self-loops."""
    graph = jraph.GraphsTuple(
        nodes=dict(species=SPECIES, positions=POLAR_POSITIONS), edges=None,
        senders=SENDERS, receivers=RECEIVERS, n_node=np.array([5]), n_edge=np.array([20]),
        globals=None)
    padded = jraph.pad_with_graphs(graph, n_node=8, n_edge=25, n_graph=2)
    node_mask = jraph.get_node_padding_mask(padded)
    inputs = _inputs(padded.nodes['positions'], padded.nodes['species'], padded.senders,
                     padded.receivers, node_mask, jraph.get_edge_padding_mask(padded))
    node_graph = jnp.repeat(jnp.arange(2), padded.n_node, total_repeat_length=8)
    return inputs, node_graph


def test_padding_invariance_and_gradients(model):
    _, params, backbone = model
    nodes, edges = backbone(params, **_inputs(POLAR_POSITIONS))
    inputs, _ = _padded_inputs()
    nodes_pad, edges_pad = backbone(params, **inputs)
    # float32 round-off only (padding changes XLA's summation order; JAX 0.12 differs in the
    # last bits, 2e-6 on an edge feature of 3.2).
    np.testing.assert_allclose(nodes_pad[:5], nodes, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(edges_pad[:20], edges, atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(nodes_pad[5:], 0.0)
    np.testing.assert_array_equal(edges_pad[20:], 0.0)

    def loss(p, positions):
        out_nodes, out_edges = backbone(p, **{**inputs, 'positions': positions})
        return jnp.sum(jnp.sin(out_nodes)) + jnp.sum(jnp.sin(out_edges))

    grad_params, grad_pos = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        params, inputs['positions'])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad_params))
    assert np.all(np.isfinite(grad_pos))
    np.testing.assert_array_equal(grad_pos[5:], 0.0)
    assert np.abs(grad_pos[:2]).min() > 0.0  # the atoms of the polar bond


def test_energy_invariance_forces_and_energy_only_path(model):
    module, params, _ = model
    inputs, node_graph = _padded_inputs()
    apply = jax.jit(functools.partial(module.apply, num_graphs=2, compute_edges=True))
    energy_fn = jax.jit(lambda p, pos: energy_lib.energy_and_forces(
        p, functools.partial(module.apply, num_graphs=2), pos, node_graph=node_graph,
        **{k: v for k, v in inputs.items() if k != 'positions'}))

    energies, forces = energy_fn(params, inputs['positions'])
    assert energies.shape == (2,) and forces.shape == (8, 3)
    assert float(energies[1]) == 0.0 and np.all(np.asarray(forces[5:]) == 0.0)
    assert np.all(np.isfinite(forces)) and np.abs(forces[:5]).max() > 0.0
    full = apply(params, node_graph=node_graph, **inputs)
    np.testing.assert_allclose(full, energies, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(forces, axis=0), 0.0, atol=1e-5 * np.abs(forces).max())

    # Energies invariant (rtol), forces rotate (atol relative to the largest force).
    assert_equivariant(lambda pos: energy_fn(params, pos), inputs['positions'],
                       rotate_vectors, lambda r, out: (out[0], rotate_vectors(r, out[1])),
                       rotations=[random_rotation(5)], rtol=(1e-5, 0.0), atol=(0.0, 1e-5),
                       relative=(False, True), outputs=(energies, forces))
    energies_shift, forces_shift = energy_fn(params, inputs['positions'] + 1.5)
    np.testing.assert_allclose(energies_shift, energies, rtol=1e-5)
    np.testing.assert_allclose(forces_shift, forces, atol=1e-5 * np.abs(forces).max())


def test_remat_and_bfloat16_options(model):
    _, params, backbone = model
    inputs = _inputs(POLAR_POSITIONS)
    nodes, _ = backbone(params, **inputs)
    backbone_params = {'params': params['params']['backbone']}
    for overrides, tol in [(dict(remat=True), 1e-6), (dict(matmul_dtype='bfloat16'), 0.1)]:
        variant = backbone_lib.HELMBackbone.from_config(_config(**overrides))
        variant_nodes, _ = jax.jit(variant.apply)(backbone_params, **inputs)
        assert variant_nodes.dtype == jnp.float32
        assert relative_error(variant_nodes, nodes) < tol, overrides


def _chunked_vs_unchunked(dtype, inputs):
    """Relative differences (nodes, edges, gradients) of the edge-chunked and plain paths."""
    # One layer: chunking is per layer, and one layer compiles in half the time.
    base = backbone_lib.HELMBackbone.from_config(_config(dtype=dtype, param_dtype=dtype,
                                                         num_layers=1))
    # Every node's messages span several chunks. 25 padded edges in chunks of at most 4:
    # the last chunk is padded; 20 edges in chunks of at most 7: five chunks of 4.
    chunked = backbone_lib.HELMBackbone.from_config(
        _config(dtype=dtype, param_dtype=dtype, chunk_edges_above=0, num_layers=1,
                edge_chunk_size=4 if inputs['senders'].shape[0] == 25 else 7))
    params = jax.jit(functools.partial(base.init, compute_edges=True))(
        jax.random.PRNGKey(2), **inputs)
    chunked_params = jax.eval_shape(functools.partial(chunked.init, compute_edges=True),
                                    jax.random.PRNGKey(2), **inputs)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), chunked_params) == jax.tree.map(
        lambda x: (x.shape, x.dtype), params)

    def loss(module):
        def fn(p, positions):
            nodes, edges = module.apply(p, **{**inputs, 'positions': positions})
            return jnp.sum(jnp.sin(nodes)) + jnp.sum(jnp.sin(edges))
        return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))

    errors = [relative_error(a, b) for a, b in zip(jax.jit(chunked.apply)(params, **inputs),
                                                   jax.jit(base.apply)(params, **inputs))]
    (_, grads_chunked), (_, grads) = (loss(m)(params, inputs['positions'])
                                      for m in (chunked, base))
    errors += [relative_error(a, b) for a, b in zip(jax.tree.leaves(grads_chunked),
                                                    jax.tree.leaves(grads))]
    energy_only = jax.jit(functools.partial(chunked.apply, compute_edges=False))(params,
                                                                                 **inputs)
    errors.append(relative_error(energy_only[0], jax.jit(base.apply)(params, **inputs)[0]))
    return errors, chunked, params


@pytest.mark.slow
def test_edge_chunked_path_matches_unchunked_float32():
    inputs, _ = _padded_inputs()  # padded edges and nodes inside the chunks
    errors, _, _ = _chunked_vs_unchunked('float32', inputs)
    assert max(errors) < 1e-5, max(errors)


@pytest.mark.slow
def test_edge_chunked_path_matches_unchunked_float64_and_is_equivariant():
    with jax.enable_x64(True):
        inputs = _inputs(POLAR_POSITIONS, dtype=jnp.float64)
        errors, chunked, params = _chunked_vs_unchunked('float64', inputs)
        assert max(errors) < 1e-12, max(errors)
        apply = jax.jit(chunked.apply)
        assert_equivariant(lambda pos: apply(params, **_inputs(pos, dtype=jnp.float64)),
                           POLAR_POSITIONS, rotate_vectors, _rotate_features,
                           rotations=[random_rotation(6)], atol=1e-10, relative=True)
