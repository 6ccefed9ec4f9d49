"""Hamiltonian matrices <-> padded atom-pair blocks <-> irreps.

Three exact, linear representations of an AO matrix ``H`` (PySCF AO order):

1. The full matrix ``[n_ao, n_ao]``.
2. Padded blocks on the molecular graph: node blocks ``[n_atoms, A, A]`` (``H_ii``) and
   directed-edge blocks ``[n_edges, A, A]`` (edge ``e`` holds ``H[senders[e],
   receivers[e]]``: rows of the sender's AOs, columns of the receiver's), in the
   template's padded layout (:class:`helm_jax.basis.Template`). Slots an element does not
   have are zero and masked.
3. Irreps: each template shell pair ``(s1, s2)`` of angular momenta ``(l1, l2)`` is moved
   to the e3nn-jax basis and coupled to ``l3 = |l1-l2| .. l1+l2`` with orthogonal
   Clebsch-Gordan matrices (:func:`helm_jax.sph.coupling_matrix`). The irreps of one block
   are laid out as an e3nn ``IrrepsArray`` would be: all ``l3 = 0`` components, then
   ``l3 = 1``, ..., each ``[mul_l, 2l+1]`` flattened mul-major, multiplicities ordered
   by shell pair ``(s1, s2)`` row-major.

Every map is a static gather (plus small per-(l1, l2) matrix products), so the same code
runs on numpy arrays (data pipeline) and inside ``jax.jit`` (model heads, losses).

Diagonal-block reduction: ``H_ii`` is symmetric, so the irreps of slot pair ``(b, a)``
follow from ``(a, b)`` by a sign ``(-1)^(l1+l2+l3)`` and, for ``a == b``, only ``l3`` with
that sign ``+1`` are non-zero. :class:`IrrepsLayout` with ``reduced=True`` keeps only those
unique values; :meth:`IrrepsLayout.expand_reduced` rebuilds the full node irreps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import sph


def _xp(x):
    """numpy for numpy inputs, jax.numpy otherwise (keeps the data pipeline jax-free)."""
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp
    return jnp


def _take(xp, values, index):
    """``xp.take(values, index, axis=-1)`` with int32 indices.

    A fixed index dtype keeps jax's cached ``take`` traces valid when a process switches
    ``jax_enable_x64`` on after tracing in 32-bit mode (a float64 run after a float32 one):
    int64 numpy indices become int32 in one mode and int64 in the other.
    """
    return xp.take(values, np.asarray(index, np.int32), axis=-1)


def _gather(values, index):
    """``values[..., index]`` with ``index == -1`` giving 0 (static ``index``)."""
    xp = _xp(values)
    out = _take(xp, values, np.maximum(index, 0))
    return xp.where(index >= 0, out, xp.zeros((), out.dtype))


# --------------------------------------------------------------------------------------
# Full matrix <-> padded blocks.
# --------------------------------------------------------------------------------------


def template_to_molecule(elements: Sequence[int], template: basis_lib.Template) -> np.ndarray:
    """Molecule AO index of each template AO of each atom (-1 where the slot is empty).

    Args:
      elements: atomic numbers ``[n_atoms]`` (PySCF atom order).
      template: the padded block template.

    Returns:
      int64 ``[n_atoms, A]``.
    """
    elements = [int(z) for z in elements]
    out = np.full((len(elements), template.n_ao), -1, np.int64)
    start = 0
    for i, z in enumerate(elements):
        amap = template.ao_map(z)
        out[i, amap] = start + np.arange(len(amap))
        start += len(amap)
    return out


def check_matrix(h: np.ndarray, elements: Sequence[int], template: basis_lib.Template,
                 name: str = "H", symmetric_tol: float | None = 1e-6) -> int:
    """Validates that ``h`` is a square (symmetric) matrix of the molecule's basis size.

    Returns:
      The molecule's number of AOs.

    Raises:
      ValueError: naming the mismatch and what was expected.
    """
    n_ao = basis_lib.molecule_n_ao(elements, template.basis, template.ecp or None)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {h.shape}.")
    if h.shape[0] != n_ao:
        symbols = "".join(basis_lib.symbol(z) for z in elements)
        raise ValueError(
            f"{name} is {h.shape[0]}x{h.shape[1]} but {symbols} has {n_ao} AOs in "
            f"{template.basis!r}" + (f" (ECP {template.ecp!r})" if template.ecp else "")
            + ": the matrix belongs to another basis, another molecule, or another atom "
            "order.")
    if symmetric_tol is not None:
        asym = float(np.abs(h - h.T).max()) if h.size else 0.0
        scale = max(1.0, float(np.abs(h).max())) if h.size else 1.0
        if asym > symmetric_tol * scale:
            raise ValueError(
                f"{name} is not symmetric (max |{name} - {name}^T| = {asym:.3g}); "
                "pass a symmetric real matrix (e.g. (H + H.T) / 2 if the asymmetry is noise).")
    return n_ao


def block_indices(elements: Sequence[int], template: basis_lib.Template,
                  senders: np.ndarray, receivers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat full-matrix index of every padded block entry (-1 for empty slots).

    Returns:
      ``(node_idx [n_atoms, A, A], edge_idx [n_edges, A, A])``, int64 indices into
      ``H.reshape(-1)``; ``idx >= 0`` is the validity mask.
    """
    t2m = template_to_molecule(elements, template)
    n_ao = int(t2m.max()) + 1 if t2m.size else 0

    def pair(rows, cols):
        r, c = t2m[rows][:, :, None], t2m[cols][:, None, :]
        return np.where((r >= 0) & (c >= 0), r * n_ao + c, -1)

    idx = np.arange(len(t2m))
    return pair(idx, idx), pair(np.asarray(senders, np.int64), np.asarray(receivers, np.int64))


def full_to_blocks(h, elements: Sequence[int], template: basis_lib.Template,
                   senders: np.ndarray, receivers: np.ndarray, check: bool = True):
    """Splits a full AO matrix into padded node and directed-edge blocks.

    Args:
      h: ``[n_ao, n_ao]`` in PySCF AO order.
      elements: atomic numbers ``[n_atoms]``.
      template: padded block template.
      senders, receivers: ``[n_edges]`` atom indices of each directed edge.
      check: validate size and symmetry first.

    Returns:
      ``(node_blocks [n_atoms, A, A], edge_blocks [n_edges, A, A])`` (zeros in empty slots).
    """
    if check:
        check_matrix(np.asarray(h), elements, template)
    node_idx, edge_idx = block_indices(elements, template, senders, receivers)
    flat = h.reshape(-1)
    return _gather(flat, node_idx), _gather(flat, edge_idx)


def block_masks(elements: Sequence[int], template: basis_lib.Template,
                senders: np.ndarray, receivers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validity masks ``([n_atoms, A, A], [n_edges, A, A])`` of the padded blocks."""
    node_idx, edge_idx = block_indices(elements, template, senders, receivers)
    return node_idx >= 0, edge_idx >= 0


def full_indices(elements: Sequence[int], template: basis_lib.Template,
                 senders: np.ndarray, receivers: np.ndarray) -> np.ndarray:
    """Index of each full-matrix entry into ``concat(node_blocks.ravel(), edge_blocks.ravel())``.

    Entries of atom pairs that are not edges of the graph get -1 (they assemble to 0).

    Returns:
      int64 ``[n_ao, n_ao]``.
    """
    t2m = template_to_molecule(elements, template)
    n_atoms, a = t2m.shape
    atom_of, slot_of = np.nonzero(t2m >= 0)
    order = np.argsort(t2m[atom_of, slot_of])
    atom_of, slot_of = atom_of[order], slot_of[order]  # per molecule AO
    edge_of = np.full((n_atoms, n_atoms), -1, np.int64)
    edge_of[np.asarray(senders, np.int64), np.asarray(receivers, np.int64)] = np.arange(
        len(senders))
    ai, aj = atom_of[:, None], atom_of[None, :]
    within = slot_of[:, None] * a + slot_of[None, :]
    node_pos = ai * a * a + within
    e = edge_of[ai, aj]
    edge_pos = np.where(e >= 0, n_atoms * a * a + e * a * a + within, -1)
    return np.where(ai == aj, node_pos, edge_pos)


def blocks_to_full(node_blocks, edge_blocks, elements: Sequence[int],
                   template: basis_lib.Template, senders: np.ndarray, receivers: np.ndarray,
                   symmetrize: bool = False):
    """Assembles the full AO matrix (PySCF order) from padded blocks.

    Exact inverse of :func:`full_to_blocks` when the edges include every ordered atom pair;
    otherwise pairs without an edge assemble to 0.

    Args:
      node_blocks: ``[n_atoms, A, A]``.
      edge_blocks: ``[n_edges, A, A]``.
      elements, template, senders, receivers: as in :func:`full_to_blocks`.
      symmetrize: return ``(H + H^T) / 2`` (for predictions, whose two directed edges of a
        pair are predicted independently).

    Returns:
      ``[n_ao, n_ao]`` (numpy or jax, like the inputs).
    """
    xp = _xp(node_blocks)
    flat = xp.concatenate([node_blocks.reshape(-1), edge_blocks.reshape(-1)])
    h = _gather(flat, full_indices(elements, template, senders, receivers))
    return (h + h.T) / 2 if symmetrize else h


# --------------------------------------------------------------------------------------
# Blocks <-> irreps.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Component:
    s1: int
    s2: int
    l3: int


class IrrepsLayout:
    """Static index tables mapping padded ``[A, A]`` blocks to irreps and back.

    Attributes:
      template: the block template.
      reduced: keep only the unique, non-zero values of symmetric (diagonal) blocks.
      muls: multiplicity of each ``l = 0 .. 2 * template.l_max``.
      dim: total size of the flat irreps vector.
    """

    def __init__(self, template: basis_lib.Template, reduced: bool = False):
        self.template = template
        self.reduced = reduced
        slot_l = template.slot_l
        offs = template.slot_offsets
        a = template.n_ao
        n_slots = len(slot_l)
        # Pair types (l1, l2) in a fixed order; each gathers its shell-pair sub-blocks.
        self._types = []
        type_pos = {}  # (s1, s2) -> (type index, pair index within type)
        for l1 in range(template.l_max + 1):
            for l2 in range(template.l_max + 1):
                pairs = [(s1, s2) for s1 in range(n_slots) for s2 in range(n_slots)
                         if slot_l[s1] == l1 and slot_l[s2] == l2]
                if not pairs:
                    continue
                rows = np.array([offs[s1] + np.arange(2 * l1 + 1) for s1, _ in pairs])
                cols = np.array([offs[s2] + np.arange(2 * l2 + 1) for _, s2 in pairs])
                idx = (rows[:, :, None] * a + cols[:, None, :]).reshape(len(pairs), -1)
                u = sph.coupling_matrix(l1, l2)
                q = np.kron(sph.pyscf_to_e3nn(l1), sph.pyscf_to_e3nn(l2))
                for p, sp in enumerate(pairs):
                    type_pos[sp] = (len(self._types), p)
                # PySCF block -> e3nn block (Q1 B Q2^T) -> irreps (U), as one matrix.
                self._types.append(((l1, l2), idx, u @ q))
        # Position of every (s1, s2, l3, m) component in the type-major concatenation.
        type_start = np.concatenate(
            [[0], np.cumsum([t[1].size for t in self._types])]).astype(np.int64)
        comps_by_l: dict[int, list[_Component]] = {}
        for s1 in range(n_slots):
            for s2 in range(n_slots):
                l1, l2 = slot_l[s1], slot_l[s2]
                for l3 in sph.coupling_l3(l1, l2):
                    if reduced and not self._unique(s1, s2, l1, l2, l3):
                        continue
                    comps_by_l.setdefault(l3, []).append(_Component(s1, s2, l3))
        l_top = 2 * template.l_max
        self.muls = tuple(len(comps_by_l.get(l, [])) for l in range(l_top + 1))
        perm, comp_s1, comp_s2, comp_l = [], [], [], []
        self._comp_flat_start = {}
        for l in range(l_top + 1):
            for c in comps_by_l.get(l, []):
                t, p = type_pos[(c.s1, c.s2)]
                (l1, l2), idx, _ = self._types[t]
                n = (2 * l1 + 1) * (2 * l2 + 1)
                l3_start = sum(2 * k + 1 for k in sph.coupling_l3(l1, l2) if k < l)
                self._comp_flat_start[(c.s1, c.s2, l)] = len(perm)
                perm.extend(type_start[t] + p * n + l3_start + np.arange(2 * l + 1))
                comp_s1 += [c.s1] * (2 * l + 1)
                comp_s2 += [c.s2] * (2 * l + 1)
                comp_l += [l] * (2 * l + 1)
        self._perm = np.asarray(perm, np.int64)  # irreps position -> type-major position
        self.dim = len(self._perm)
        self.comp_slot1 = np.asarray(comp_s1, np.int64)  # [dim]
        self.comp_slot2 = np.asarray(comp_s2, np.int64)  # [dim]
        self.comp_l = np.asarray(comp_l, np.int64)  # [dim]
        if not reduced:
            self._inv_perm = np.argsort(self._perm)
            self._block_pos = np.argsort(np.concatenate([t[1].ravel() for t in self._types]))

    @staticmethod
    def _unique(s1, s2, l1, l2, l3) -> bool:
        """Whether an (s1, s2, l3) component of a symmetric block is stored when reduced."""
        if s1 < s2:
            return True
        return s1 == s2 and (l1 + l2 + l3) % 2 == 0

    @property
    def irreps(self) -> str:
        """The layout as an e3nn-style irreps string (parity = (-1)^l)."""
        return " + ".join(f"{m}x{l}{'e' if l % 2 == 0 else 'o'}"
                          for l, m in enumerate(self.muls) if m)

    def blocks_to_irreps(self, blocks):
        """``[..., A, A]`` blocks (PySCF AO order within slots) -> ``[..., dim]`` irreps.

        With ``reduced=True`` the blocks must be symmetric (diagonal blocks).
        """
        xp = _xp(blocks)
        flat = blocks.reshape(blocks.shape[:-2] + (-1,))
        parts = []
        for _, idx, m in self._types:
            x = _take(xp, flat, idx)  # [..., P, n]
            parts.append((x @ xp.asarray(m.T, dtype=x.dtype)).reshape(x.shape[:-2] + (-1,)))
        return _take(xp, xp.concatenate(parts, axis=-1), self._perm)

    def irreps_to_blocks(self, irreps):
        """``[..., dim]`` irreps -> ``[..., A, A]`` blocks (exact inverse)."""
        if self.reduced:
            irreps = self.expand_reduced(irreps)
            return self._full_layout().irreps_to_blocks(irreps)
        xp = _xp(irreps)
        a = self.template.n_ao
        z = _take(xp, irreps, self._inv_perm)
        parts, start = [], 0
        for _, idx, m in self._types:
            size = idx.size
            zt = z[..., start:start + size].reshape(z.shape[:-1] + idx.shape)
            parts.append((zt @ xp.asarray(m, dtype=zt.dtype)).reshape(z.shape[:-1] + (size,)))
            start += size
        flat = _take(xp, xp.concatenate(parts, axis=-1), self._block_pos)
        return flat.reshape(flat.shape[:-1] + (a, a))

    def _full_layout(self) -> "IrrepsLayout":
        return irreps_layout(self.template, reduced=False)

    @functools.cached_property
    def _expand_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """For each full-layout component: source index in the reduced vector and sign."""
        full = self._full_layout()
        src = np.zeros(full.dim, np.int64)
        sign = np.zeros(full.dim)
        slot_l = self.template.slot_l
        for (s1, s2, l3), start in full._comp_flat_start.items():
            l1, l2 = slot_l[s1], slot_l[s2]
            n = 2 * l3 + 1
            if s1 <= s2:
                key, sgn = (s1, s2, l3), 1.0
            else:  # block(b, a) = block(a, b)^T: irreps pick up (-1)^(l1+l2+l3).
                key, sgn = (s2, s1, l3), (-1.0) ** (l1 + l2 + l3)
            if key in self._comp_flat_start:
                src[start:start + n] = self._comp_flat_start[key] + np.arange(n)
                sign[start:start + n] = sgn
        return src, sign

    def expand_reduced(self, irreps):
        """Reduced node irreps ``[..., dim]`` -> full-layout irreps ``[..., full.dim]``."""
        if not self.reduced:
            return irreps
        xp = _xp(irreps)
        src, sign = self._expand_tables
        return _take(xp, irreps, src) * xp.asarray(sign, dtype=irreps.dtype)

    def valid_mask(self, slot_mask1, slot_mask2):
        """Validity of each irreps component given the two atoms' shell-slot masks.

        Args:
          slot_mask1: bool ``[..., n_slots]`` (row atom), e.g. ``template.slot_mask(z)``.
          slot_mask2: bool ``[..., n_slots]`` (column atom).

        Returns:
          bool ``[..., dim]``.
        """
        xp = _xp(slot_mask1)
        return (_take(xp, slot_mask1, self.comp_slot1)
                & _take(xp, slot_mask2, self.comp_slot2))

    def split_by_l(self, irreps) -> list:
        """``[..., dim]`` -> list over l of ``[..., mul_l, 2l+1]`` (empty l included)."""
        out, start = [], 0
        for l, mul in enumerate(self.muls):
            size = mul * (2 * l + 1)
            out.append(irreps[..., start:start + size].reshape(
                irreps.shape[:-1] + (mul, 2 * l + 1)))
            start += size
        return out

@functools.lru_cache(maxsize=None)
def irreps_layout(template: basis_lib.Template, reduced: bool = False) -> IrrepsLayout:
    """Cached :class:`IrrepsLayout` of a template."""
    return IrrepsLayout(template, reduced=reduced)
