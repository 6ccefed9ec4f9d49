"""Block-sparse predicted Hamiltonians: one structure's H as a ``scipy.sparse`` CSR matrix.

The dense path (:func:`helm_jax.model.assemble.batch_to_full`) builds every predicted H as a
full ``[n_ao, n_ao]`` matrix; for 10,000 atoms (80,000 AOs in def2-SVP) that is 51 GB.
Here the same matrix is assembled from the model's per-atom node irreps and per-directed-edge
irreps as a compressed-sparse-row matrix holding only the blocks of atom pairs within the
graph cutoff, both ``(i, j)`` and ``(j, i)``, and the atoms' diagonal blocks, in PySCF AO
order. No dense ``n_ao x n_ao`` array is ever built: memory is O(nnz).

    builder = SparseHamiltonianBuilder(elements, template, node_layout, edge_layout, stats)
    builder.add_nodes(node_irreps)                     # [n_atoms, D_node] model outputs
    for s, r, y in edge_chunks:                        # any number of chunks, any order
        builder.add_edges(s, r, y)                     # [E_chunk], [E_chunk], [E_chunk, D_edge]
    h = builder.to_csr()                               # scipy.sparse.csr_matrix [n_ao, n_ao]

The result equals the dense assembly (``h.toarray()`` against ``batch_to_full``) bit for
bit in the tests (tests/test_sparse_hamiltonian.py): the dense path symmetrises ``(H + H^T) / 2`` entry by entry, so an atom
pair's block is ``(B_ij + B_ji^T) / 2`` from the two directed edges' blocks (``B_ij / 2`` when
only one of them is given), and the diagonal block ``(B_ii + B_ii^T) / 2``; halving is exact
in binary floating point, so ``B_ij / 2 + B_ji^T / 2`` here is the same number. The model's
standardised l = 0 node outputs are de-standardised with the checkpoint's statistics first,
as the dense path does (:func:`helm_jax.model.assemble.node_irreps_to_physical`). Irreps
become padded blocks with the same :meth:`helm_jax.blocks.IrrepsLayout.irreps_to_blocks`,
and the padding is dropped with the template's AO map
(:func:`helm_jax.blocks.template_to_molecule`).

The CSR arrays are written directly (no COO triplets to sort): within a row, column blocks
follow the atom order, so the indices are sorted and the format is canonical. Memory is
O(nnz): the stored edge blocks (8 bytes per entry), the CSR data (8) and int32 column
indices (4), and one element pair's symmetrised blocks at a time; a 10,000-atom water box
with 120 M stored entries peaked at 3.1 GiB (27 bytes per entry, docs/using_a_checkpoint.md,
"Sparse Hamiltonians"). Block-sparse BSR is not offered: blocks differ in size per element.

:func:`save_npz` / :func:`load_npz` store a CSR matrix with metadata (elements, basis, ...)
in one ``.npz`` that ``scipy.sparse.load_npz`` also reads; the project HDF5 format stores
it as ``fock_csr/{data,indices,indptr,shape}`` (:func:`helm_jax.data.h5format.write_structure`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from helm_jax import basis as basis_lib
from helm_jax import blocks
from helm_jax.data import statistics as stats_lib
from helm_jax.model import assemble

#: Edges turned from irreps into padded blocks at a time inside :meth:`add_edges` (bounds
#: the ``[chunk, A, A]`` temporary: 21 MB for A = 18), and atom pairs scattered into the CSR
#: arrays at a time in :meth:`to_csr`.
CHUNK = 8192
#: ``.npz`` key of the JSON metadata, and prefix of metadata arrays (:func:`save_npz`).
META_KEY = "helm_meta_json"
META_ARRAY_PREFIX = "helm_meta_array__"


def _int_array(x, name: str) -> np.ndarray:
    """``x`` as a 1-D int64 array (ValueError naming ``name`` otherwise)."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of atom indices, got shape "
                         f"{list(a.shape)}.")
    if a.size and a.dtype.kind not in "iu":
        if a.dtype.kind != "f" or not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer atom indices, got dtype {a.dtype}.")
    return a.astype(np.int64)


class SparseHamiltonianBuilder:
    """Accumulates one structure's predicted blocks and assembles its H as CSR.

    Nodes may come all at once or in chunks (``atoms=``), edges in any number of chunks in
    any order; each atom and each directed edge ``(s, r)`` exactly once. A pair may have both
    directed edges (the graph's usual case; its block is ``(B_sr + B_rs^T) / 2``) or only one
    (``B_sr / 2``, as the dense path gives).

    Args:
      elements: atomic numbers ``[n_atoms]`` (PySCF atom order).
      template: the checkpoint's padded block template.
      node_layout: irreps layout of the node outputs (reduced or not).
      edge_layout: irreps layout of the edge outputs (the full layout).
      stats: the checkpoint's statistics: node irreps are the model's standardised outputs
        and are de-standardised; None for physical node irreps (Eh).

    Raises:
      ValueError: an element outside the template, layouts of another template, or a
        reduced edge layout.
    """

    def __init__(self, elements: Sequence[int], template: basis_lib.Template,
                 node_layout: blocks.IrrepsLayout, edge_layout: blocks.IrrepsLayout,
                 stats: stats_lib.Statistics | None = None):
        z = np.asarray(elements)
        if z.ndim != 1 or not z.size:
            raise ValueError(f"elements must be a non-empty 1-D array of atomic numbers, got "
                             f"shape {list(z.shape)}.")
        self.elements = z.astype(np.int32)
        for zi in sorted(set(self.elements.tolist())):
            template.element(zi)  # clear error for an element outside the template
        for name, layout in (("node_layout", node_layout), ("edge_layout", edge_layout)):
            if layout.template != template:
                raise ValueError(f"{name} belongs to template {layout.template.describe()} "
                                 f"({layout.template.basis!r}), not to the given "
                                 f"{template.describe()} ({template.basis!r}): take both "
                                 "layouts from the checkpoint's GraphSpec (spec.node_layout, "
                                 "spec.edge_layout).")
        if edge_layout.reduced:
            raise ValueError("edge_layout is reduced (symmetric blocks only); directed edges "
                             "use the full layout: blocks.irreps_layout(template, "
                             "reduced=False).")
        self.template, self.node_layout, self.edge_layout = template, node_layout, edge_layout
        self.stats = stats
        self.n_atoms = int(len(z))
        # Molecule AO index of each template AO slot per atom (-1: empty), via the dense
        # path's helper; per atom, its AOs are consecutive, in template-slot order.
        t2m = blocks.template_to_molecule(self.elements, template)  # [n_atoms, A]
        self.atom_n_ao = (t2m >= 0).sum(axis=1).astype(np.int64)  # [n_atoms]
        self.ao_offsets = np.concatenate([[0], np.cumsum(self.atom_n_ao)]).astype(np.int64)
        self.n_ao = int(self.ao_offsets[-1])
        self._species = np.unique(self.elements)  # sorted elements of this structure
        self._kind = np.searchsorted(self._species, self.elements)  # [n_atoms] element index
        # Template slots of each element's AOs, in PySCF order (the padding to drop).
        self._slots = [np.asarray(template.ao_map(int(zi)), np.int64) for zi in self._species]
        self._node_set = np.zeros(self.n_atoms, bool)
        self._nodes: list[tuple[np.ndarray, np.ndarray]] = []  # (atoms, sym. blocks) per kind
        # (kind_s, kind_r) -> list of (senders, receivers, blocks [E, n_s, n_r]) chunks.
        self._edges: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.n_edges = 0
        self._released = False  # to_csr(release=True) dropped the stored blocks

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_ao, n_ao)`` of the assembled matrix."""
        return self.n_ao, self.n_ao

    def _compact(self, padded: np.ndarray, ks: int, kr: int) -> np.ndarray:
        """``[E, A, A]`` padded blocks of (kind ks, kind kr) pairs -> ``[E, n_s, n_r]``."""
        rows, cols = self._slots[ks], self._slots[kr]
        return padded[:, rows[:, None], cols[None, :]]

    def add_nodes(self, node_irreps, atoms=None) -> None:
        """Adds the diagonal blocks of all atoms, or of the atoms ``atoms``.

        Args:
          node_irreps: ``[n, node_layout.dim]`` node outputs (standardised if the builder has
            statistics), ``n = n_atoms`` or ``len(atoms)``.
          atoms: int ``[n]`` atom indices of the rows; None for all atoms in order.

        Raises:
          ValueError: a wrong shape, an atom index out of range, or an atom given twice.
        """
        atoms = (np.arange(self.n_atoms) if atoms is None
                 else _int_array(atoms, "atoms"))
        x = np.asarray(node_irreps, np.float64)
        if x.shape != (len(atoms), self.node_layout.dim):
            raise ValueError(f"node_irreps has shape {list(x.shape)}; expected "
                             f"[{len(atoms)}, {self.node_layout.dim}] (one row of the node "
                             f"layout {self.node_layout.irreps} per atom).")
        if atoms.size and (atoms.min() < 0 or atoms.max() >= self.n_atoms):
            raise ValueError(f"atoms holds indices outside 0..{self.n_atoms - 1}.")
        if len(np.unique(atoms)) != len(atoms) or self._node_set[atoms].any():
            raise ValueError("add_nodes got an atom twice (in this call or an earlier one): "
                             "give each atom's node irreps exactly once.")
        phys = assemble.node_irreps_to_physical(x, self.elements[atoms], self.node_layout,
                                                self.stats)
        for start in range(0, len(atoms), CHUNK):
            idx = atoms[start:start + CHUNK]
            padded = self.node_layout.irreps_to_blocks(phys[start:start + CHUNK])
            kinds = self._kind[idx]
            for k in np.unique(kinds):
                sel = kinds == k
                b = self._compact(padded[sel], k, k)
                # The dense path's (H + H^T) / 2, entry by entry.
                self._nodes.append((idx[sel], (b + np.swapaxes(b, 1, 2)) / 2))
        self._node_set[atoms] = True

    def add_edges(self, senders, receivers, edge_irreps) -> None:
        """Adds the blocks of directed edges ``senders[e] -> receivers[e]``.

        Edge ``e``'s irreps are the block ``H[senders[e], receivers[e]]`` (rows of the
        sender's AOs, columns of the receiver's), as in :mod:`helm_jax.blocks`.

        Args:
          senders, receivers: int ``[E]`` atom indices (a chunk of the structure's edges).
          edge_irreps: ``[E, edge_layout.dim]`` edge outputs.

        Raises:
          ValueError: wrong shapes, atom indices out of range, or a self-edge ``s == r``.
            A directed edge given twice (even in different chunks) is refused by
            :meth:`to_csr`.
        """
        s, r = _int_array(senders, "senders"), _int_array(receivers, "receivers")
        y = np.asarray(edge_irreps)
        if len(s) != len(r) or y.shape != (len(s), self.edge_layout.dim):
            raise ValueError(f"senders {list(s.shape)}, receivers {list(r.shape)} and "
                             f"edge_irreps {list(y.shape)} do not match: expected [E], [E] "
                             f"and [E, {self.edge_layout.dim}] (one row of the edge layout "
                             "per directed edge).")
        if not len(s):
            return
        lo, hi = min(s.min(), r.min()), max(s.max(), r.max())
        if lo < 0 or hi >= self.n_atoms:
            raise ValueError(f"edge atom index {lo if lo < 0 else hi} is outside "
                             f"0..{self.n_atoms - 1}: the edges belong to another structure "
                             "or carry a batch offset (subtract the structure's first node).")
        if np.any(s == r):
            e = int(np.flatnonzero(s == r)[0])
            raise ValueError(f"edge {e} is a self-edge ({s[e]} -> {r[e]}): an atom's own "
                             "block is a node block (add_nodes), not an edge.")
        n_kind = len(self._species)
        for start in range(0, len(s), CHUNK):
            sc, rc = s[start:start + CHUNK], r[start:start + CHUNK]
            padded = self.edge_layout.irreps_to_blocks(
                np.asarray(y[start:start + CHUNK], np.float64))  # [e, A, A]
            pair = self._kind[sc] * n_kind + self._kind[rc]
            for p in np.unique(pair):
                sel = pair == p
                ks, kr = divmod(int(p), n_kind)
                self._edges.setdefault((ks, kr), []).append(
                    (sc[sel], rc[sel], self._compact(padded[sel], ks, kr)))
        self.n_edges += len(s)

    # -- assembly ------------------------------------------------------------------------

    def _pair_groups(self):
        """Per unordered element pair ``(a, b)``, ``a <= b``: the atom pairs ``(i, j)``
        (i of kind a, j of kind b; ``i < j`` when ``a == b``) with a block, as int64 keys
        ``i * n_atoms + j``, and per stored edge chunk its position among them and whether
        its blocks are transposed (edges ``b -> a``, or ``j -> i``)."""
        n = self.n_atoms
        n_kind = len(self._species)
        groups = []
        for a in range(n_kind):
            for b in range(a, n_kind):
                parts = []  # (edge kind pair, chunk index, transposed [E], keys [E])
                for ks, kr in ([(a, b)] if a == b else [(a, b), (b, a)]):
                    for ci, (s, r, _) in enumerate(self._edges.get((ks, kr), [])):
                        flip = s > r if a == b else np.full(len(s), ks != a)
                        keys = np.where(flip, r * n + s, s * n + r)
                        parts.append(((ks, kr), ci, flip, keys))
                if not parts:
                    continue
                uniq, inv = np.unique(np.concatenate([p[3] for p in parts]),
                                      return_inverse=True)
                flips = np.concatenate([p[2] for p in parts])
                for flipped in (False, True):  # per orientation, no directed edge twice
                    counts = np.bincount(inv[flips == flipped], minlength=len(uniq))
                    if len(counts) and counts.max() > 1:
                        i, j = divmod(int(uniq[np.argmax(counts)]), n)
                        i, j = (j, i) if flipped else (i, j)
                        raise ValueError(f"directed edge {i} -> {j} was added more than "
                                         "once: give each directed edge exactly once over "
                                         "all add_edges calls.")
                groups.append((a, b, uniq, parts, inv))
        return groups

    def to_csr(self, release: bool = False) -> sp.csr_matrix:
        """The assembled, symmetrised H ``[n_ao, n_ao]`` (Eh, PySCF AO order) as CSR.

        Stored entries are the full blocks of every atom (diagonal) and of every atom pair
        with at least one directed edge (both ``(i, j)`` and ``(j, i)``); column indices are
        sorted (canonical format) and int32 while they fit.

        Args:
          release: free each element pair's stored edge blocks once they are assembled
            (lower peak memory; the builder cannot assemble again afterwards).

        Raises:
          ValueError: atoms without node irreps, or a directed edge added twice.
        """
        if self._released:
            raise ValueError("to_csr(release=True) already consumed this builder's edge "
                             "blocks: build a new SparseHamiltonianBuilder.")
        if not self._node_set.all():
            missing = np.flatnonzero(~self._node_set)
            raise ValueError(f"{len(missing)} atom(s) have no node irreps (first: atom "
                             f"{int(missing[0])}): call add_nodes for every atom before "
                             "to_csr.")
        n = self.n_atoms
        groups = self._pair_groups()
        # Directed atom pairs with a block: the diagonal, each pair (i, j), then (j, i).
        pair_rows = [np.arange(n)]
        pair_cols = [np.arange(n)]
        for _, _, uniq, _, _ in groups:
            pair_rows.append(uniq // n)
            pair_cols.append(uniq % n)
        for _, _, uniq, _, _ in groups:
            pair_rows.append(uniq % n)
            pair_cols.append(uniq // n)
        rows, cols = np.concatenate(pair_rows), np.concatenate(pair_cols)
        del pair_rows, pair_cols
        width = self.atom_n_ao[cols]
        order = np.lexsort((cols, rows))  # row-major: every row holds its diagonal pair
        w_sorted = width[order]
        before = np.cumsum(w_sorted) - w_sorted  # columns of the row's earlier pairs ...
        first = np.searchsorted(rows[order], np.arange(n))  # ... minus the row's start
        col_start = np.empty(len(rows), np.int64)
        col_start[order] = before - before[first][rows[order]]
        row_len = np.bincount(rows, weights=width, minlength=n).astype(np.int64)  # per atom
        del order, w_sorted, before, first, width
        # Atom i's AO row a starts at row_base[i] + a * row_len[i] in the CSR arrays.
        sizes = self.atom_n_ao * row_len
        row_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        nnz = int(sizes.sum())
        indptr = np.empty(self.n_ao + 1, np.int64)
        ao_atom = np.repeat(np.arange(n), self.atom_n_ao)
        ao_local = np.arange(self.n_ao) - self.ao_offsets[ao_atom]
        indptr[:-1] = row_base[ao_atom] + ao_local * row_len[ao_atom]
        indptr[-1] = nnz
        del ao_atom, ao_local
        idx_dtype = np.int32 if max(nnz, self.n_ao) < np.iinfo(np.int32).max else np.int64
        data = np.empty(nnz, np.float64)
        indices = np.empty(nnz, idx_dtype)

        def scatter(pair_pos: np.ndarray, blocks_: np.ndarray) -> None:
            """Writes blocks ``[P, n_row, n_col]`` of the directed pairs ``pair_pos``."""
            r_at, c_at = rows[pair_pos], cols[pair_pos]
            nr, nc = blocks_.shape[1:]
            base = row_base[r_at] + col_start[pair_pos]
            pos = (base[:, None, None] + np.arange(nr)[None, :, None]
                   * row_len[r_at][:, None, None] + np.arange(nc)[None, None, :])
            data[pos] = blocks_
            indices[pos] = self.ao_offsets[c_at][:, None, None] + np.arange(nc)

        for atoms, b in self._nodes:
            for start in range(0, len(atoms), CHUNK):
                scatter(atoms[start:start + CHUNK], b[start:start + CHUNK])
        n_pairs = sum(len(g[2]) for g in groups)
        offset = n  # position of the group's (i, j) pairs; (j, i) follow n_pairs later
        for a, b, uniq, parts, inv in groups:
            na, nb = len(self._slots[a]), len(self._slots[b])
            sym = np.zeros((len(uniq), na, nb))
            start = 0
            for key, ci, flip, keys in parts:
                blk = self._edges[key][ci][2]
                pos = inv[start:start + len(keys)]
                start += len(keys)
                # Positions are distinct within each orientation (no directed edge twice),
                # so plain fancy-index += adds each half block once.
                if not flip.all():
                    sym[pos[~flip]] += blk[~flip] / 2
                if flip.any():
                    sym[pos[flip]] += np.swapaxes(blk[flip], 1, 2) / 2
            if release:
                self._edges.pop((a, b), None)
                self._edges.pop((b, a), None)
            # Pairs in row-major order of their CSR rows (uniq is sorted by (i, j); the
            # transposed blocks by (j, i)), so the writes sweep the CSR arrays in order.
            by_col = np.lexsort((uniq // n, uniq % n))
            for s0 in range(0, len(uniq), CHUNK):
                chunk = np.arange(s0, min(s0 + CHUNK, len(uniq)))
                scatter(offset + chunk, sym[chunk])
                chunk = by_col[s0:s0 + CHUNK]
                scatter(offset + n_pairs + chunk, np.swapaxes(sym[chunk], 1, 2))
            offset += len(uniq)
            del sym
        if release:
            self._released = True
            self._nodes = []
        h = sp.csr_matrix((data, indices, indptr), shape=self.shape, copy=False)
        h.has_sorted_indices = True
        return h


def assemble_sparse(elements: Sequence[int], template: basis_lib.Template,
                    node_layout: blocks.IrrepsLayout, edge_layout: blocks.IrrepsLayout,
                    stats: stats_lib.Statistics | None, node_irreps, senders, receivers,
                    edge_irreps) -> sp.csr_matrix:
    """One-call :class:`SparseHamiltonianBuilder`: all nodes and edges of one structure.

    Returns:
      The symmetrised H as ``scipy.sparse.csr_matrix`` ``[n_ao, n_ao]``.
    """
    builder = SparseHamiltonianBuilder(elements, template, node_layout, edge_layout, stats)
    builder.add_nodes(node_irreps)
    builder.add_edges(senders, receivers, edge_irreps)
    return builder.to_csr(release=True)


def batch_to_sparse(out: Mapping[str, Any], batch, node_layout: blocks.IrrepsLayout,
                    edge_layout: blocks.IrrepsLayout, stats: stats_lib.Statistics | None,
                    spin: str = "alpha", select: Sequence[bool] | None = None
                    ) -> list[sp.csr_matrix | None]:
    """:func:`helm_jax.model.assemble.batch_to_full` as CSR: each real molecule's H.

    Args:
      out: model outputs of one single-device padded batch (``node_h``, ``edge_h``, and
        ``node_h_beta``, ``edge_h_beta`` of a spin-resolved model).
      batch: the padded batch.
      node_layout, edge_layout, stats: as :class:`SparseHamiltonianBuilder`.
      spin: ``"alpha"`` (or restricted) or ``"beta"`` blocks.
      select: per real molecule, whether to assemble it (None: all); skipped ones are None.

    Returns:
      One CSR matrix (or None) per real molecule, in batch order.
    """
    node_h, edge_h = assemble.spin_outputs(out, spin)
    species = np.asarray(batch.nodes["species"])
    senders, receivers = np.asarray(batch.senders), np.asarray(batch.receivers)
    mats: list[sp.csr_matrix | None] = []
    for k, (ns, es) in enumerate(assemble.split_batch(batch)):
        if select is not None and not select[k]:
            mats.append(None)
            continue
        mats.append(assemble_sparse(species[ns], node_layout.template, node_layout,
                                    edge_layout, stats, node_h[ns], senders[es] - ns.start,
                                    receivers[es] - ns.start, edge_h[es]))
    return mats


# -- files -------------------------------------------------------------------------------


def save_npz(path: str, csr, meta: Mapping[str, Any] | None = None,
             compressed: bool = False) -> None:
    """Writes a CSR matrix and its metadata to one ``.npz`` file.

    The file holds ``scipy.sparse.save_npz``'s arrays (``format``, ``shape``, ``data``,
    ``indices``, ``indptr``), so ``scipy.sparse.load_npz`` reads it too, plus the metadata:
    numpy arrays (e.g. ``elements``, ``coords``) as arrays of their own, everything else
    (basis, ecp, spin, ...) as JSON.

    Args:
      path: output file (numpy appends ``.npz`` when missing).
      csr: a scipy sparse matrix (converted to CSR).
      meta: JSON-serialisable values and numpy arrays, e.g. ``{"elements": z, "basis":
        "def2-svp", "ecp": ""}``.
      compressed: zip-deflate the arrays (smaller, several times slower).
    """
    if not sp.issparse(csr):
        raise TypeError(f"save_npz needs a scipy sparse matrix, got {type(csr).__name__}; "
                        "use scipy.sparse.csr_matrix(h) for a dense one.")
    csr = csr.tocsr()
    arrays: dict[str, Any] = {"format": np.array(b"csr"), "shape": np.array(csr.shape),
                              "data": csr.data, "indices": csr.indices, "indptr": csr.indptr}
    plain = {}
    for name, value in (meta or {}).items():
        if isinstance(value, np.ndarray):
            arrays[META_ARRAY_PREFIX + name] = value
        else:
            plain[name] = value
    try:
        arrays[META_KEY] = np.array(json.dumps(plain))
    except TypeError as err:
        raise TypeError(f"save_npz metadata must be JSON-serialisable or numpy arrays: "
                        f"{err}") from err
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


def load_npz(path: str) -> tuple[sp.csr_matrix, dict[str, Any]]:
    """Reads a file of :func:`save_npz`: ``(csr, meta)`` (metadata arrays as saved).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a CSR ``.npz`` of :func:`save_npz` /
        ``scipy.sparse.save_npz``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist (save_npz writes '<name>.npz').")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("format", "shape", "data", "indices", "indptr") if k not in f]
        if missing or f["format"].item() not in (b"csr", "csr"):
            raise ValueError(f"{path!r} is not a CSR matrix file of save_npz (missing "
                             f"{missing or 'format=csr'}).")
        csr = sp.csr_matrix((f["data"], f["indices"], f["indptr"]),
                            shape=tuple(int(x) for x in f["shape"]))
        meta = json.loads(f[META_KEY].item()) if META_KEY in f else {}
        for name in f.files:
            if name.startswith(META_ARRAY_PREFIX):
                meta[name[len(META_ARRAY_PREFIX):]] = f[name]
    return csr, meta
