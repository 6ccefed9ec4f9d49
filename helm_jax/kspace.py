"""Bloch sums and band energies of predicted real-space Hamiltonian blocks (JAX).

Conventions are those of :mod:`helm_jax.data.periodic` and docs/periodic.md:

* A directed edge ``(i, j, T)`` of a periodic graph carries the block ``H_ij(T)`` between
  atom i in the home cell and atom j in the cell shifted by the integer lattice translation
  ``T``; an on-site node block is ``H_ii(0)``.
* ``H(k) = sum_T exp(+2 pi i k . T) H(T)`` with k in fractional reciprocal coordinates (the
  sign of PySCF's k-point matrices, :func:`helm_jax.data.periodic.bloch_sum`).
* The two directed edges ``(i, j, T)`` and ``(j, i, -T)`` of a pair are predicted
  independently, so :func:`hamiltonian_k` returns the Hermitian part ``(H(k) + H(k)^H) / 2``
  (for exact blocks, ``H_ji(-T) = H_ij(T)^T``, it changes nothing), as the molecular
  assembly returns ``(H + H^T) / 2``.

**Entries.** One graph's Bloch sum is a scatter of *entries* of the batch's flat block
vector ``flat = concat(node_blocks.ravel(), edge_blocks.ravel())`` (padded ``[N, A, A]``
node and ``[E, A, A]`` edge blocks, the layout of :func:`helm_jax.blocks.full_indices` and
``batching.pad_qm``'s ``ao_index``): entry ``m`` adds ``phase * flat[entry_src[m]]`` to
the AO-matrix position ``entry_dest[m] = a * n + b``, with the phase of the translation of
batch edge ``entry_edge[m]`` (-1: an on-site entry, phase 1). :func:`bloch_entries` builds
them on the host for one graph, AOs in PySCF order. Entries are not weighted: every edge is
one physical image pair, each T once (the graph's ``image_pairs``, not the tied
minimum-image representatives of the labels).

**Bands.** :func:`band_energies` solves ``H(k) c = e S(k) c`` per k by the canonical
orthogonalisation of :func:`helm_jax.orbitals.canonical_orthogonalizer` with the complex
``X = U L^-1/2`` over ``L > s_threshold``; dropped directions and padded AOs get an
eigenvalue shift above a Gershgorin bound and sort last, as in the molecular solver
(:mod:`helm_jax.orbitals`). S(k) is data (no gradient). Eigenvalue derivatives are the
first-order ``real(diag(V^H dH V))`` of a custom JVP, finite at degenerate bands (the
Dirac point of graphene, the Gamma point of many crystals); eigenvectors are not
differentiated. complex64 and complex128 both work; the dtype follows ``flat`` (float32 ->
complex64, float64 -> complex128).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import blocks
from helm_jax import orbitals


def hamiltonian_k(flat, entry_src, entry_dest, entry_edge, translations, kpts, n: int):
    """Hermitian ``H(k)`` of one graph of a padded batch, for every k at once.

    Args:
      flat: real ``[F]``, ``concat(node_blocks.ravel(), edge_blocks.ravel())`` of the
        batch's padded ``[N, A, A]`` node and ``[E, A, A]`` edge blocks.
      entry_src: int ``[M]`` index into ``flat`` (-1: padding entry, contributes nothing).
      entry_dest: int ``[M]`` position ``a * n + b`` of the entry in the ``[n, n]`` AO
        matrix.
      entry_edge: int ``[M]`` batch edge whose translation phases the entry (-1: on-site,
        phase 1).
      translations: float ``[E, 3]`` integer-valued T of every batch edge.
      kpts: ``[K, 3]`` k-points, fractional reciprocal coordinates.
      n: AO count of the output matrices (static; the batch's padded AO count).

    Returns:
      complex ``[K, n, n]``: ``(H(k) + H(k)^H) / 2`` with
      ``H(k) = sum_entries exp(2 pi i k . T_edge) flat[src]`` (complex128 for float64 ``flat``,
      complex64 for float32).
    """
    flat, translations = jnp.asarray(flat), jnp.asarray(translations)
    real = flat.dtype
    valid = entry_src >= 0
    values = jnp.where(valid, flat[jnp.maximum(entry_src, 0)], 0.0)  # [M]
    t = jnp.where((entry_edge >= 0)[:, None],
                  translations[jnp.maximum(entry_edge, 0)].astype(real), 0.0)  # [M, 3]
    turns = jnp.asarray(kpts, real) @ t.T  # [K, M], k . T in turns
    turns = turns - jnp.round(turns)  # exp(2 pi i x) has period 1: keeps float32 accurate
    angle = 2 * jnp.pi * turns
    terms = jax.lax.complex(jnp.cos(angle), jnp.sin(angle)) * values  # [K, M]
    dest = jnp.where(valid, entry_dest, 0)
    h = jax.ops.segment_sum(terms.T, dest, num_segments=n * n)  # [n * n, K]
    h = h.T.reshape(-1, n, n)
    return (h + jnp.conj(jnp.swapaxes(h, -1, -2))) / 2


@jax.custom_jvp
def _eigvalsh(h):
    """Ascending eigenvalues ``[..., n]`` (real) of Hermitian ``h [..., n, n]``."""
    return jnp.linalg.eigh(h)[0]


@_eigvalsh.defjvp
def _eigvalsh_jvp(primals, tangents):
    """First-order perturbation theory ``de_i = real(v_i^H dh v_i)``: finite for any
    (also degenerate) spectrum, since no eigenvector derivative appears."""
    (h,), (dh,) = primals, tangents
    w = _eigvalsh(h)
    v = jnp.linalg.eigh(h)[1]
    dw = jnp.real(jnp.einsum("...pi,...pq,...qi->...i", jnp.conj(v), dh, v))
    return w, dw


def _hermitian(a):
    return (a + jnp.conj(jnp.swapaxes(a, -1, -2))) / 2


def _bands_one_k(h, s, ao_mask, s_threshold: float):
    """Band energies ``[n]`` and number of real bands of one k-point (see
    :func:`band_energies`)."""
    mask2 = ao_mask[:, None] & ao_mask[None, :]
    s = jnp.where(mask2, _hermitian(jax.lax.stop_gradient(s)), 0.0)
    x, keep = orbitals.canonical_orthogonalizer(s, s_threshold, jnp)
    ht = _hermitian(jnp.conj(x.T) @ jnp.where(mask2, h, 0.0) @ x)
    shift = jax.lax.stop_gradient(jnp.max(jnp.sum(jnp.abs(ht), axis=-1))) + 1.0
    ht = ht + jnp.diag(jnp.where(keep, 0.0, shift))
    return _eigvalsh(ht), jnp.sum(keep)


def band_energies(hk, sk, ao_mask, s_threshold: float = orbitals.S_THRESHOLD):
    """Band energies of ``H(k) c = e S(k) c`` at every k (canonical orthogonalisation).

    Per k: ``S = U L U^H``, ``X = U L^-1/2`` over ``L > s_threshold``
    (:func:`helm_jax.orbitals.canonical_orthogonalizer`), then the eigenvalues of
    ``X^H H X``. Padded AOs (``ao_mask`` False) are zeroed in H and S, hence dropped like
    (near-)linearly dependent directions; every dropped direction gets an eigenvalue one
    above a Gershgorin bound of the others, so the ``n_bands`` real bands come first. S is
    data (``stop_gradient``); eigenvalue derivatives are ``real(diag(V^H dH V))``, finite at
    degenerate bands.

    Args:
      hk: complex ``[K, n, n]`` Hermitian ``H(k)`` (complex64 or complex128).
      sk: ``[K, n, n]`` overlap ``S(k)`` (complex or real; cast to ``hk``'s dtype).
      ao_mask: bool ``[n]``, real AOs.
      s_threshold: overlap eigenvalues ``<=`` this are dropped.

    Returns:
      ``(e, n_bands)``: real ``[K, n]`` ascending band energies (entries from ``n_bands``
      on are the shifted dropped directions) and int ``[K]`` number of real bands.
    """
    sk = jnp.asarray(sk).astype(hk.dtype)
    return jax.vmap(lambda h, s: _bands_one_k(h, s, ao_mask, s_threshold))(hk, sk)


def band_gap(e, n_occ, k_mask):
    """Indirect gap: lowest band ``n_occ`` minus highest band ``n_occ - 1`` over real k.

    Two electrons per band: ``n_occ`` bands are occupied. The caller masks graphs without
    a valid gap (metals, ``n_occ`` 0 or no unoccupied band): the value is then finite but
    meaningless.

    Args:
      e: ``[K, n]`` ascending band energies.
      n_occ: number of occupied bands (int scalar, may be traced).
      k_mask: bool ``[K]``, real k-points.

    Returns:
      Scalar ``min_k e[k, n_occ] - max_k e[k, n_occ - 1]`` over k with ``k_mask``.
    """
    n = e.shape[-1]
    valence = e[:, jnp.clip(n_occ - 1, 0, n - 1)]  # [K]
    conduction = e[:, jnp.clip(n_occ, 0, n - 1)]
    # Finite fill values (never selected when a k-point is real): no inf, no NaN gradients.
    vbm = jnp.max(jnp.where(k_mask, valence, jnp.min(jax.lax.stop_gradient(valence)) - 1.0))
    cbm = jnp.min(jnp.where(k_mask, conduction,
                            jnp.max(jax.lax.stop_gradient(conduction)) + 1.0))
    return cbm - vbm


def bloch_entries(species: Sequence[int], senders, receivers, template: basis_lib.Template,
                  node_offset: int = 0, edge_offset: int = 0, n_node_batch: int | None = None,
                  n_ao: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Bloch-sum entries (:func:`hamiltonian_k`) of one periodic graph in a batch (numpy).

    Covers every on-site block ``(i, i, 0)`` and every directed-edge block of the graph,
    each entry one real AO pair, AOs in PySCF order (:func:`helm_jax.blocks.
    template_to_molecule`). A padded batch builder calls it per graph with that graph's
    offsets and pads the result with -1 to the batch's entry budget.

    Args:
      species: atomic numbers ``[n_atoms]`` of the graph (PySCF atom order).
      senders, receivers: int ``[E_g]`` local atom indices of the graph's directed edges
        (edge ``e`` holds ``H_{senders[e], receivers[e]}(T_e)``).
      template: the padded block template (``A = template.n_ao``).
      node_offset: index of the graph's first node in the batch.
      edge_offset: index of the graph's first edge in the batch.
      n_node_batch: the batch's padded node count ``N`` (edge blocks start at ``N * A * A``
        in ``flat``); default ``len(species)`` (one unpadded graph).
      n_ao: row stride of ``entry_dest`` (the batch's padded AO count ``n``); default the
        graph's own AO count.

    Returns:
      ``(entry_src, entry_dest, entry_edge)`` int32 ``[M]``: index into ``flat``, position
      ``a * n_ao + b`` in the graph's AO matrix, and batch edge of the entry (-1 on-site).

    Raises:
      ValueError: ``n_ao`` smaller than the graph's AO count, or a node or edge index out
        of range.
    """
    t2m = blocks.template_to_molecule(species, template)  # [n_atoms, A]
    n_atoms, a = t2m.shape
    n_graph_ao = int(t2m.max()) + 1 if t2m.size else 0
    n_ao = n_graph_ao if n_ao is None else int(n_ao)
    n_node_batch = n_atoms if n_node_batch is None else int(n_node_batch)
    senders = np.asarray(senders, np.int64).reshape(-1)
    receivers = np.asarray(receivers, np.int64).reshape(-1)
    if n_ao < n_graph_ao:
        raise ValueError(f"n_ao={n_ao} is smaller than the graph's {n_graph_ao} AOs")
    if node_offset + n_atoms > n_node_batch:
        raise ValueError(f"nodes {node_offset}..{node_offset + n_atoms - 1} do not fit in "
                         f"n_node_batch={n_node_batch}")
    if senders.size and (min(senders.min(), receivers.min()) < 0
                         or max(senders.max(), receivers.max()) >= n_atoms):
        raise ValueError(f"edge atom indices must be local, in [0, {n_atoms})")

    def pairs(rows, cols, first_src, edge):
        """Entries of blocks (rows[p], cols[p]) stored at flat offsets first_src[p]."""
        r, c = t2m[rows][:, :, None], t2m[cols][:, None, :]  # [P, A, 1], [P, 1, A]
        ok = (r >= 0) & (c >= 0)  # [P, A, A]
        within = np.arange(a)[:, None] * a + np.arange(a)[None, :]
        src = first_src[:, None, None] + within
        dest = r * n_ao + c
        p_idx = np.broadcast_to(np.arange(len(rows))[:, None, None], ok.shape)
        return src[ok], dest[ok], edge[p_idx[ok]]

    atoms = np.arange(n_atoms)
    edges = np.arange(len(senders))
    node = pairs(atoms, atoms, (node_offset + atoms) * a * a, np.full(n_atoms, -1))
    edge = pairs(senders, receivers, (n_node_batch + edge_offset + edges) * a * a,
                 edge_offset + edges)
    return tuple(np.concatenate([x, y]).astype(np.int32) for x, y in zip(node, edge))
