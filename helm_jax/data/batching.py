"""Fixed-shape padded ``jraph.GraphsTuple`` batches: budgets, buckets and greedy packing.

Shapes are static so each bucket compiles once: a batch holds at most ``n_node - 1`` real
atoms, ``n_edge`` real edges and ``n_graph - 1`` real molecules, and is padded with one
padding graph (jraph's convention) whose nodes sit at the origin with atomic number 0 and
whose edges are zero-length self-loops on the first padding node. Budgets come from a scan
of the dataset (:func:`plan_budgets`): molecules are split into a few size buckets by edge
count, each with its own budget, so padding waste and the number of compiled shapes both
stay small. A molecule that does not fit any budget raises an error naming the budgets;
nothing is ever dropped.

Graphs with quantum-chemistry labels (``MolGraph.qm``) in a budget with ``n_ao > 0`` add
per-graph arrays padded to ``n_ao`` AOs under ``globals["qm"]`` (see :func:`pad_batch`).
Periodic graphs add each edge's translation and Cartesian shift (``edges["translation"]``,
``edges["shift"]``) and which edges are labelled (``edges["h_label_mask"]``); with band
targets (``MolGraph.kspace``) a budget with ``n_k > 0`` adds ``globals["kspace"]``
(:func:`pad_kspace`). An atom's own periodic images are edges ``i -> i``: real edges are
those whose sender is a real atom (padding edges are self-loops on a padding node).

The masks of this layout have one home here, for the model, the losses and the assembly of
full matrices: :func:`node_mask` (real atoms), :func:`edge_mask` (real edges) and
:func:`graph_of_nodes` (each node's graph).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import jraph
import numpy as np

from helm_jax.data.graphs import MolGraph


@dataclasses.dataclass(frozen=True)
class Budget:
    """Padded sizes of one batch shape (padding graph included).

    ``n_ao`` is the padded AO count of the per-graph quantum-chemistry or k-space arrays
    (0: none); ``n_k`` and ``n_entries`` the padded k-points and Bloch-sum entries per graph
    of the k-space arrays (:func:`pad_kspace`; 0: none).
    """

    n_node: int
    n_edge: int
    n_graph: int
    n_ao: int = 0
    n_k: int = 0
    n_entries: int = 0

    def fits(self, n_node: int, n_edge: int, n_graph: int) -> bool:
        """Whether real totals fit (one node and one graph are kept for padding)."""
        return (n_node <= self.n_node - 1 and n_edge <= self.n_edge
                and n_graph <= self.n_graph - 1)

    def to_dict(self) -> dict:
        """JSON form."""
        return dataclasses.asdict(self)


class BudgetError(ValueError):
    """A molecule or batch does not fit the padding budget."""


def plan_budgets(n_nodes: np.ndarray, n_edges: np.ndarray, num_buckets: int = 3,
                 molecules_per_batch: int | None = None,
                 edges_per_batch: int | None = None) -> tuple[list[Budget], np.ndarray]:
    """Chooses bucket budgets from a scan of the dataset.

    Molecules are sorted by edge count and split at quantiles into ``num_buckets`` buckets
    (fewer if the data is small or uniform). Each bucket's budget fits either
    ``molecules_per_batch`` of its largest molecule, or about ``edges_per_batch`` edges
    (never less than its largest molecule).

    Args:
      n_nodes: ``[M]`` atoms per molecule.
      n_edges: ``[M]`` directed edges per molecule.
      num_buckets: number of size buckets.
      molecules_per_batch: molecules per batch (e.g. 1 for nablaDFT, 5-10 for MD17).
      edges_per_batch: edge target per batch (e.g. ~18k for OMol_CSH).

    Returns:
      ``(budgets, bucket_of)``: the budgets (ascending) and the bucket of each molecule.
    """
    if (molecules_per_batch is None) == (edges_per_batch is None):
        raise ValueError("Give exactly one of molecules_per_batch and edges_per_batch.")
    n_nodes, n_edges = np.asarray(n_nodes), np.asarray(n_edges)
    order = np.argsort(n_edges, kind="stable")
    chunks = [c for c in np.array_split(order, max(1, min(num_buckets, len(order)))) if len(c)]
    budgets, bucket_of = [], np.zeros(len(n_nodes), np.int64)
    for c in chunks:
        max_n, max_e = int(n_nodes[c].max()), int(n_edges[c].max())
        if molecules_per_batch is not None:
            k = molecules_per_batch
            b = Budget(n_node=k * max_n + 1, n_edge=k * max_e, n_graph=k + 1)
        else:
            k = max(1, edges_per_batch // max(max_e, 1))
            n_edge = max(edges_per_batch, max_e)
            b = Budget(n_node=max(k * max_n, max_n) + 1, n_edge=n_edge,
                       n_graph=int(min(n_edge // max(int(n_edges[c].min()), 1), len(c))) + 2)
        if budgets and budgets[-1] == b:
            bucket_of[c] = len(budgets) - 1
            continue
        budgets.append(b)
        bucket_of[c] = len(budgets) - 1
    return budgets, bucket_of


def pack_greedy(indices: Sequence[int], n_nodes: np.ndarray, n_edges: np.ndarray,
                budget: Budget) -> list[list[int]]:
    """Packs molecules into batches in the given order, starting a new batch when full.

    Raises:
      BudgetError: a single molecule exceeds the budget.
    """
    batches, cur, tn, te = [], [], 0, 0
    for i in indices:
        n, e = int(n_nodes[i]), int(n_edges[i])
        if not budget.fits(n, e, 1):
            raise BudgetError(
                f"Molecule {i} ({n} atoms, {e} edges) exceeds the padding budget {budget} "
                "(n_node and n_graph include one padding slot): give larger batches "
                "(--config.data.batch.edges_per_batch=N above this molecule's edges, or a "
                "larger --config.data.batch.molecules_per_batch) or a smaller "
                "--config.model.cutoff.")
        if cur and not budget.fits(tn + n, te + e, len(cur) + 1):
            batches.append(cur)
            cur, tn, te = [], 0, 0
        cur.append(int(i))
        tn += n
        te += e
    if cur:
        batches.append(cur)
    return batches


def node_mask(species):
    """bool ``[N]``: real atoms; padding nodes have atomic number 0 (numpy or jax)."""
    return species > 0


def edge_mask(species, senders, receivers):
    """bool ``[E]``: real edges; padding edges are self-loops on a padding node (numpy or jax).

    A real self-loop ``i -> i`` is an edge of a periodic graph to the atom's own image in
    another cell; molecular graphs have none.

    Args:
      species: ``[N]`` atomic numbers (0 = padding).
      senders, receivers: ``[E]`` node indices.
    """
    del receivers  # padding edges start and end on padding nodes
    return node_mask(species[senders])


def graph_of_nodes(batch: jraph.GraphsTuple):
    """int ``[N]``: the graph of each node of one padded batch (jit-able; padding nodes
    belong to the padding graph)."""
    n = batch.nodes["species"].shape[0]
    return jnp.repeat(jnp.arange(batch.n_node.shape[0]), batch.n_node, total_repeat_length=n)


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n,) + x.shape[1:], x.dtype)
    out[:len(x)] = x
    return out


def pad_batch(graphs: Sequence[MolGraph], budget: Budget, node_dim: int | None,
              edge_dim: int | None, dtype=np.float32, spin_resolved: bool = False,
              periodic: bool = False, template=None) -> jraph.GraphsTuple:
    """Concatenates molecules into one padded ``GraphsTuple`` of numpy arrays.

    Args:
      graphs: the molecules (may be empty: an all-padding batch).
      budget: padded sizes.
      node_dim, edge_dim: label sizes, or None to leave Hamiltonian labels out.
      dtype: float dtype of positions and labels.
      spin_resolved: also ship beta labels ``h_beta`` (``GraphSpec.spin_resolved``); a
        graph with restricted labels gets its alpha labels there.
      periodic: ship ``edges["translation"]``, ``edges["shift"]`` (zero for molecules) and
        ``edges["h_label_mask"]`` (``GraphSpec.periodic``).
      template: the basis template (needed for ``budget.n_k``: :func:`pad_kspace`).

    Returns:
      ``GraphsTuple`` with nodes ``species [N]``, ``positions [N, 3]``, ``forces [N, 3]``,
      ``forces_mask [N]`` (and ``h [N, node_dim]``, with ``spin_resolved`` also ``h_beta``);
      edges ``h [E, edge_dim]`` (and ``h_beta``); globals ``energy [G]``,
      ``energy_mask [G]``, ``h_mask [G]``, ``charge`` and ``spin`` (int32 ``[G]``, 2S; 0 on
      padding graphs) and, if ``budget.n_ao``, ``qm`` (:func:`pad_qm`).

    Raises:
      BudgetError: the molecules do not fit the budget together.
    """
    tn = sum(g.n_node for g in graphs)
    te = sum(g.n_edge for g in graphs)
    if not budget.fits(tn, te, len(graphs)):
        raise BudgetError(f"{len(graphs)} molecules with {tn} atoms and {te} edges exceed "
                          f"the padding budget {budget}.")
    offsets = np.cumsum([0] + [g.n_node for g in graphs])[:-1]
    cat = lambda xs, shape, dt: (np.concatenate(xs) if xs else np.zeros(shape, dt))
    species = cat([g.species for g in graphs], (0,), np.int32)
    positions = cat([g.positions for g in graphs], (0, 3), np.float64)
    forces = cat([g.forces if g.forces is not None else np.zeros((g.n_node, 3))
                  for g in graphs], (0, 3), np.float64)
    forces_mask = cat([np.full(g.n_node, g.forces is not None) for g in graphs], (0,), bool)
    senders = cat([g.senders + o for g, o in zip(graphs, offsets)], (0,), np.int32)
    receivers = cat([g.receivers + o for g, o in zip(graphs, offsets)], (0,), np.int32)
    pad_node = tn  # padding edges are self-loops on the first padding node
    nodes = {
        "species": _pad_rows(species.astype(np.int32), budget.n_node),
        "positions": _pad_rows(positions, budget.n_node).astype(dtype),
        "forces": _pad_rows(forces, budget.n_node).astype(dtype),
        "forces_mask": _pad_rows(forces_mask, budget.n_node),
    }
    edges = {}
    h_mask = np.array([g.node_labels is not None for g in graphs], bool)
    if node_dim is not None:
        def labels(rows, dim, n, pick):
            return _pad_rows(cat([pick(g) if pick(g) is not None else np.zeros((rows(g), dim))
                                  for g in graphs], (0, dim), np.float64), n).astype(dtype)

        n_rows, e_rows = (lambda g: g.n_node), (lambda g: g.n_edge)
        nodes["h"] = labels(n_rows, node_dim, budget.n_node, lambda g: g.node_labels)
        edges["h"] = labels(e_rows, edge_dim, budget.n_edge, lambda g: g.edge_labels)
        if spin_resolved:  # restricted labels: beta = alpha
            nodes["h_beta"] = labels(n_rows, node_dim, budget.n_node, lambda g: (
                g.node_labels if g.node_labels_beta is None else g.node_labels_beta))
            edges["h_beta"] = labels(e_rows, edge_dim, budget.n_edge, lambda g: (
                g.edge_labels if g.edge_labels_beta is None else g.edge_labels_beta))
    energy = np.array([g.energy for g in graphs], np.float64)
    n_graph_pad = budget.n_graph - len(graphs)
    n_node = np.concatenate([[g.n_node for g in graphs], [budget.n_node - tn],
                             np.zeros(n_graph_pad - 1)]).astype(np.int32)
    n_edge = np.concatenate([[g.n_edge for g in graphs], [budget.n_edge - te],
                             np.zeros(n_graph_pad - 1)]).astype(np.int32)
    globals_ = {
        "energy": _pad_rows(np.nan_to_num(energy), budget.n_graph).astype(np.float64),
        "energy_mask": _pad_rows(np.isfinite(energy), budget.n_graph),
        "h_mask": _pad_rows(h_mask, budget.n_graph),
        "charge": _pad_rows(np.array([g.charge for g in graphs], np.int32), budget.n_graph),
        "spin": _pad_rows(np.array([g.spin for g in graphs], np.int32), budget.n_graph),
    }
    if periodic:
        def per_edge(pick, width, dt):
            return _pad_rows(cat([pick(g) if pick(g) is not None else np.zeros(
                (g.n_edge,) + width, dt) for g in graphs], (0,) + width, dt), budget.n_edge)

        edges["translation"] = per_edge(lambda g: g.translations, (3,), np.float64).astype(
            dtype)
        edges["shift"] = per_edge(lambda g: g.shifts, (3,), np.float64).astype(dtype)
        edges["h_label_mask"] = per_edge(lambda g: g.labelled_edges(), (), bool)
    if budget.n_k:
        globals_["kspace"] = pad_kspace(graphs, budget, template, dtype)
    elif budget.n_ao:
        globals_["qm"] = pad_qm(graphs, budget, dtype)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, globals=globals_,
        senders=_pad_rows(senders, budget.n_edge) + np.where(
            np.arange(budget.n_edge) >= te, pad_node, 0).astype(np.int32),
        receivers=_pad_rows(receivers, budget.n_edge) + np.where(
            np.arange(budget.n_edge) >= te, pad_node, 0).astype(np.int32),
        n_node=n_node, n_edge=n_edge)


def pad_qm(graphs: Sequence[MolGraph], budget: Budget, dtype=np.float32) -> dict:
    """Per-graph quantum-chemistry arrays padded to ``budget.n_ao`` AOs (``n = n_ao``).

    Graphs without ``qm`` (and the padding graphs) get zeros and false masks.

    Returns:
      dict with ``ao_index`` int32 ``[G, n, n]`` (position of each entry of the graph's full
      H in ``concat(node_blocks.ravel(), edge_blocks.ravel())`` of the batch's padded
      ``[N, A, A]`` node and ``[E, A, A]`` edge blocks; -1: no block), ``ao_mask [G, n]``,
      ``overlap [G, n, n]``, ``ao_dipole [G, 3, n, n]`` (bohr), ``nuclear_dipole [G, 3]``,
      ``n_alpha``, ``n_beta`` int32 ``[G]`` (occupied orbitals of each spin; equal for closed
      shells, whose doubly occupied count they are), targets ``mo_energy [G, n]`` (alpha, or
      restricted) and ``mo_energy_beta [G, n]`` (beta; a copy of ``mo_energy`` for
      restricted targets) with ``mo_energy_count`` int32 ``[G]`` (how many are given, the
      same for both spins), ``dipole [G, 3]``, ``polarizability [G, 3, 3]`` with
      ``dipole_mask``/``polarizability_mask [G]``.

    Raises:
      BudgetError: a molecule has more AOs than ``budget.n_ao``.
    """
    g_n, n = budget.n_graph, budget.n_ao
    out = {"ao_index": np.full((g_n, n, n), -1, np.int32), "ao_mask": np.zeros((g_n, n), bool),
           "overlap": np.zeros((g_n, n, n)), "ao_dipole": np.zeros((g_n, 3, n, n)),
           "nuclear_dipole": np.zeros((g_n, 3)), "n_alpha": np.zeros(g_n, np.int32),
           "n_beta": np.zeros(g_n, np.int32), "mo_energy": np.zeros((g_n, n)),
           "mo_energy_beta": np.zeros((g_n, n)), "mo_energy_count": np.zeros(g_n, np.int32),
           "dipole": np.zeros((g_n, 3)), "dipole_mask": np.zeros(g_n, bool),
           "polarizability": np.zeros((g_n, 3, 3)), "polarizability_mask": np.zeros(g_n, bool)}
    node_off = edge_off = 0
    for k, g in enumerate(graphs):
        q = g.qm
        if q is not None:
            if q.n_ao > n:
                raise BudgetError(f"Molecule {g.key!r} has {q.n_ao} AOs, more than the "
                                  f"budget's n_ao={n}.")
            m = q.n_ao
            block, within = np.divmod(q.ao_index, q.block_size)
            block = np.where(block < g.n_node, node_off + block,
                             budget.n_node + edge_off + block - g.n_node)
            out["ao_index"][k, :m, :m] = np.where(q.ao_index >= 0,
                                                  block * q.block_size + within, -1)
            out["ao_mask"][k, :m] = True
            out["overlap"][k, :m, :m] = q.overlap
            out["ao_dipole"][k, :, :m, :m] = q.ao_dipole
            out["nuclear_dipole"][k] = q.nuclear_dipole
            out["n_alpha"][k], out["n_beta"][k] = q.n_alpha, q.n_beta
            if q.mo_energy is not None:
                beta = q.mo_energy if q.mo_energy_beta is None else q.mo_energy_beta
                count = min(len(q.mo_energy), len(beta), n)
                out["mo_energy"][k, :count] = q.mo_energy[:count]
                out["mo_energy_beta"][k, :count] = beta[:count]
                out["mo_energy_count"][k] = count
            for name in ("dipole", "polarizability"):
                if getattr(q, name) is not None:
                    out[name][k] = getattr(q, name)
                    out[name + "_mask"][k] = True
        node_off += g.n_node
        edge_off += g.n_edge
    return {k: v.astype(dtype) if v.dtype == np.float64 else v for k, v in out.items()}


def kspace_sizes(graph: MolGraph, template) -> tuple[int, int, int]:
    """``(n_ao, n_k, n_entries)`` a periodic graph's k-space arrays need (zeros without
    band targets): its AOs, k-points and Bloch-sum entries (:func:`pad_kspace`)."""
    if graph.kspace is None:
        return 0, 0, 0
    n = np.array([len(template.ao_map(int(z))) for z in graph.species], np.int64)
    entries = int(np.sum(n * n) + np.sum(n[graph.senders] * n[graph.receivers]))
    return graph.kspace.n_ao, len(graph.kspace.kpts), entries


def pad_kspace(graphs: Sequence[MolGraph], budget: Budget, template, dtype=np.float32
               ) -> dict:
    """Per-graph k-space arrays of a periodic batch (``budget.n_ao`` AOs ``n``,
    ``budget.n_k`` k-points ``K``, ``budget.n_entries`` Bloch-sum entries ``M``).

    Graphs without band targets (and the padding graphs) get zeros and false masks.

    Returns:
      dict with ``kpts [G, K, 3]`` (fractional), ``k_mask [G, K]``, the Bloch-sum entries of
      :func:`helm_jax.kspace.bloch_entries` ``entry_src``, ``entry_dest``, ``entry_edge``
      int32 ``[G, M]`` (-1 padding; indices into the batch's flat node and edge blocks and
      its edges), ``ao_mask [G, n]``, ``overlap_re``/``overlap_im [G, K, n, n]`` (S(k)),
      ``bands [G, K, n]`` (Eh), ``band_count``, ``n_occ`` int32 ``[G]``, ``band_mask [G]``,
      ``gap [G]`` and ``gap_mask [G]`` (insulators).

    Raises:
      BudgetError: a graph needs more AOs, k-points or entries than the budget.
    """
    from helm_jax import kspace as kspace_lib  # pylint: disable=import-outside-toplevel
    g_n, n, k_n, m = budget.n_graph, budget.n_ao, budget.n_k, budget.n_entries
    out = {"kpts": np.zeros((g_n, k_n, 3)), "k_mask": np.zeros((g_n, k_n), bool),
           "entry_src": np.full((g_n, m), -1, np.int32),
           "entry_dest": np.full((g_n, m), -1, np.int32),
           "entry_edge": np.full((g_n, m), -1, np.int32),
           "ao_mask": np.zeros((g_n, n), bool), "overlap_re": np.zeros((g_n, k_n, n, n)),
           "overlap_im": np.zeros((g_n, k_n, n, n)), "bands": np.zeros((g_n, k_n, n)),
           "band_count": np.zeros(g_n, np.int32), "n_occ": np.zeros(g_n, np.int32),
           "band_mask": np.zeros(g_n, bool), "gap": np.zeros(g_n),
           "gap_mask": np.zeros(g_n, bool)}
    node_off = edge_off = 0
    for k, g in enumerate(graphs):
        q = g.kspace
        if q is not None:
            n_ao, n_k, n_entries = kspace_sizes(g, template)
            if n_ao > n or n_k > k_n or n_entries > m:
                raise BudgetError(f"Structure {g.key!r} needs {n_ao} AOs, {n_k} k-points and "
                                  f"{n_entries} Bloch-sum entries, more than the budget's "
                                  f"n_ao={n}, n_k={k_n}, n_entries={m}.")
            src, dest, edge = kspace_lib.bloch_entries(
                g.species, g.senders, g.receivers, template, node_offset=node_off,
                edge_offset=edge_off, n_node_batch=budget.n_node, n_ao=n)
            out["entry_src"][k, :len(src)] = src
            out["entry_dest"][k, :len(dest)] = dest
            out["entry_edge"][k, :len(edge)] = edge
            out["kpts"][k, :n_k] = q.kpts
            out["k_mask"][k, :n_k] = True
            out["ao_mask"][k, :n_ao] = True
            out["overlap_re"][k, :n_k, :n_ao, :n_ao] = q.overlap.real
            out["overlap_im"][k, :n_k, :n_ao, :n_ao] = q.overlap.imag
            out["bands"][k, :n_k, :n_ao] = np.nan_to_num(q.bands)
            out["band_count"][k], out["n_occ"][k] = q.band_count, q.n_occ
            out["band_mask"][k] = True
            if q.gap is not None:
                out["gap"][k], out["gap_mask"][k] = q.gap, True
        node_off += g.n_node
        edge_off += g.n_edge
    return {key: v.astype(dtype) if v.dtype == np.float64 else v for key, v in out.items()}


def stack_device_batches(batches: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Stacks per-device batches (same budget) on a new leading axis ``[n_devices, ...]``."""
    import jax
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)
