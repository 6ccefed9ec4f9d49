"""Graph parallelism: one structure spread over the ``graph`` axis of a device mesh.

A padded batch (:func:`helm_jax.data.batching.pad_batch`) is split on the host into
``P`` parts (:func:`partition_batch`), one per device of the ``graph`` mesh axis:

* every real atom is *owned* by one part; the owners come from recursive coordinate
  bisection of each structure (:func:`bisect`; or METIS, :func:`metis`), balanced in the
  number of edges each part owns (a part owns every directed edge whose receiver it owns, so node sums need no
  communication), so parts are spatially compact and their boundaries small;
* a part's *halo* is the set of atoms it does not own that send one of its edges. Each
  part's local batch is an ordinary padded batch whose node rows are
  ``[owned atoms | owned padding | halo slots]``: ``P * B`` halo slots, ``B`` per source
  part, where slot ``(q, k)`` holds the ``k``-th atom that the part needs from part ``q``.
  Halo rows and owned padding rows belong to the padding graph, so every loss and readout
  ignores them (labels, forces and energies are counted once, on their owner);
* :class:`HaloExchange` (given to the model through ``globals["halo_send"]``) refreshes the
  halo rows from their owners with one ``jax.lax.all_to_all`` over the ``graph`` axis: each
  part gathers, for every destination, the ``B`` owned rows it needs into a ``[P, B, ...]``
  buffer, and receives ``[P, B, ...]`` from all parts. The backbone calls it after the node
  initialisation and after every layer's node update; positions (so forces are exact
  -dE/dR through the exchange) and the per-node charge and spin go through it too.
  Gradients flow back through the transposed ``all_to_all``. Halo bytes per layer are
  ``P * B * (l_max+1)^2 * C * itemsize`` per device: the partition surface, not its
  volume.

Per-graph energies are ``psum``-ed over ``graph`` inside the model, so every part holds
each structure's whole energy; per-device loss sums are ``psum``-ed over
``('data', 'graph')`` before dividing (graph-level terms such as the energy MSE then count
``P`` times in both their sum and their count, which leaves every mean unchanged).

Shapes: the owned rows, halo width ``B`` and local edges are rounded up to a few
buckets (:func:`bucket`), so one structure compiles once and similar structures share
programs. Every part has the same shapes; the ``[P, ...]`` stack of local batches is
sharded over ``graph`` (``[D, P, ...]`` over ``('data', 'graph')`` with data parallelism,
:func:`helm_jax.parallel.data_parallel`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import jraph
import numpy as np

GRAPH_AXIS = "graph"


@flax.struct.dataclass
class HaloExchange:
    """Refreshes the halo rows of a part's local node array from their owners.

    Attributes:
      send_index: int ``[P, B]``: row ``q`` lists the owned local rows this part sends to
        part ``q`` (padding slots point at an owned padding row, whose features are zero).
      axis: the mesh axis of the parts (static).
    """

    send_index: jax.Array
    axis: str = flax.struct.field(pytree_node=False, default=GRAPH_AXIS)

    @property
    def num_halo(self) -> int:
        """``P * B``: the halo rows at the end of every local node array."""
        p, b = self.send_index.shape
        return p * b

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [N_loc, ...]`` with rows ``N_loc - P*B ..`` replaced by their owners' rows."""
        n_own = x.shape[0] - self.num_halo
        owned = x[:n_own]
        sent = owned[self.send_index]  # [P, B, ...]
        received = jax.lax.all_to_all(sent, self.axis, 0, 0, tiled=True)
        return jnp.concatenate([owned, received.reshape((self.num_halo,) + x.shape[1:])])


def bucket(n: int, minimum: int = 1) -> int:
    """``n`` rounded up to a multiple of an eighth of the largest power of two ``<= n``
    (at most 12.5 % padding, 8 sizes per octave), so similar structures share compiled
    shapes."""
    n = max(int(n), minimum, 1)
    step = max(1, (1 << (n.bit_length() - 1)) // 8)
    return -(-n // step) * step


def bisect(positions: np.ndarray, weights: np.ndarray, parts: int) -> np.ndarray:
    """Recursive coordinate bisection: the part (``0..parts-1``) of every point.

    Each step splits the points along the axis of their largest extent at the weighted
    quantile ``floor(parts / 2) / parts``, so every part gets about ``1 / parts`` of the
    total weight (pass the number of edges each atom receives, plus one, to balance
    edges). Deterministic (stable sorts); any ``parts >= 1``, also more than points (the
    extra parts are empty).
    """
    positions = np.asarray(positions, np.float64)
    weights = np.asarray(weights, np.float64)
    owner = np.zeros(len(positions), np.int32)

    def split(idx: np.ndarray, n_parts: int, first: int) -> None:
        if n_parts == 1 or len(idx) == 0:
            owner[idx] = first
            return
        left = n_parts // 2
        pts = positions[idx]
        axis = int(np.argmax(np.ptp(pts, axis=0))) if len(idx) > 1 else 0
        order = idx[np.argsort(pts[:, axis], kind="stable")]
        cum = np.cumsum(weights[order])
        cut = int(np.searchsorted(cum, cum[-1] * left / n_parts, side="left")) + 1
        cut = min(max(cut, 0), len(order))
        split(order[:cut], left, first)
        split(order[cut:], n_parts - left, first + left)

    split(np.arange(len(positions)), int(parts), 0)
    return owner


def metis(senders: np.ndarray, receivers: np.ndarray, weights: np.ndarray,
          parts: int) -> np.ndarray:
    """METIS k-way partition of an atom graph (``pymetis``): the part of every atom.

    Minimises the edge cut (so the halo) with node weights ``weights`` (edges received +
    1 balances edges). Edges to an atom's own periodic images are left out; several image
    edges between two atoms become one weighted edge. With no more atoms than parts, each
    atom gets its own part (the rest are empty).
    """
    import pymetis  # pylint: disable=import-outside-toplevel (optional partitioner)
    n = len(weights)
    if parts == 1 or n == 0:
        return np.zeros(n, np.int32)
    if n <= parts:
        return np.arange(n, dtype=np.int32)
    s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
    keep = s != r
    pairs, counts = np.unique(s[keep] * n + r[keep], return_counts=True)
    s, r = pairs // n, pairs % n
    starts = np.concatenate([[0], np.cumsum(np.bincount(s, minlength=n))])
    result = pymetis.part_graph(
        parts, pymetis.CSRAdjacency(starts.tolist(), r.tolist()),
        vweights=np.asarray(weights, np.int64).tolist(), eweights=counts.tolist())
    return np.asarray(result[1], np.int32)


PARTITIONERS = ("bisect", "metis")


@dataclasses.dataclass(frozen=True)
class PartitionedBatch:
    """``P`` local batches of one padded batch and the maps back to it.

    Attributes:
      graph: the local batches stacked ``[P, ...]`` (numpy), with ``globals["halo_send"]``.
      node_rows: int ``[P, N_loc]``: the batch row of each local row (-1: padding or halo).
      edge_rows: int ``[P, E_loc]``: the batch edge of each local edge (-1: padding).
      halo_nodes: real halo atoms of each part, ``[P]``.
      halo_width: ``B``, halo slots per (source, destination) pair.
      owner: int ``[N]``: the part owning each batch row (-1: padding).
    """

    graph: jraph.GraphsTuple
    node_rows: np.ndarray
    edge_rows: np.ndarray
    halo_nodes: np.ndarray
    halo_width: int
    owner: np.ndarray

    @property
    def parts(self) -> int:
        return int(self.node_rows.shape[0])

    def halo_bytes(self, features: int, itemsize: int = 4) -> tuple[int, int]:
        """``(sent, real)`` bytes per exchange and device of ``features`` numbers per node:
        the padded ``P * B`` slots, and the mean number of real halo atoms."""
        sent = self.parts * self.halo_width * features * itemsize
        return sent, int(round(float(np.mean(self.halo_nodes)) * features * itemsize))

    def nodes_to_batch(self, x: np.ndarray, num_rows: int) -> np.ndarray:
        """Owned rows of per-part node outputs ``[P, N_loc, ...]`` as ``[N, ...]`` in the
        batch's order (zeros on padding)."""
        return _scatter_back(np.asarray(x), self.node_rows, num_rows)

    def edges_to_batch(self, x: np.ndarray, num_rows: int) -> np.ndarray:
        """Per-part edge outputs ``[P, E_loc, ...]`` as ``[E, ...]`` in the batch's order."""
        return _scatter_back(np.asarray(x), self.edge_rows, num_rows)


def _scatter_back(x: np.ndarray, rows: np.ndarray, num_rows: int) -> np.ndarray:
    out = np.zeros((num_rows,) + x.shape[2:], x.dtype)
    keep = rows >= 0
    out[rows[keep]] = x[keep]
    return out


def structure_owner(positions: np.ndarray, senders: np.ndarray, receivers: np.ndarray,
                    parts: int, method: str = "bisect") -> np.ndarray:
    """Part of every atom of one structure: :func:`bisect` (or :func:`metis`) weighted by
    the edges each atom receives (so parts own about equal numbers of edges).

    Args:
      positions: ``[n, 3]``.
      senders, receivers: the structure's directed edges (indices ``0..n-1``).
      parts: ``P``.
      method: one of :data:`PARTITIONERS`.
    """
    if method not in PARTITIONERS:
        raise ValueError(f"partitioner {method!r}: choose one of {PARTITIONERS} "
                         "(config.parallel.partitioner).")
    n = len(positions)
    weights = np.bincount(np.asarray(receivers), minlength=n) + 1
    if method == "bisect":
        return bisect(positions, weights.astype(np.float64), parts)
    return metis(senders, receivers, weights, parts)


def _owners(batch: jraph.GraphsTuple, parts: int, method: str = "bisect") -> np.ndarray:
    """Part of every batch row (-1 for padding): :func:`structure_owner` of each graph."""
    species = np.asarray(batch.nodes["species"])
    senders, receivers = np.asarray(batch.senders), np.asarray(batch.receivers)
    edge_real = species[senders] > 0
    owner = np.full(len(species), -1, np.int32)
    starts = np.concatenate([[0], np.cumsum(np.asarray(batch.n_node))])
    positions = np.asarray(batch.nodes["positions"], np.float64)
    for g in range(len(starts) - 1):
        rows = np.arange(starts[g], starts[g + 1])
        rows = rows[species[rows] > 0]
        if not len(rows):
            continue
        mine = edge_real & (receivers >= rows[0]) & (receivers <= rows[-1])
        owner[rows] = structure_owner(positions[rows], senders[mine] - rows[0],
                                      receivers[mine] - rows[0], parts, method)
    return owner


@dataclasses.dataclass(frozen=True)
class _Plan:
    owner: np.ndarray  # [N] part of each batch row (-1: padding)
    owned: list  # per part: batch rows it owns
    edges: list  # per part: batch edges it owns (receiver owned)
    needs: list  # needs[p][q]: batch rows part p needs from part q (sorted)

    def sizes(self) -> tuple[int, int, int]:
        """``(owned rows, halo width B, local edges)`` rounded up with :func:`bucket`."""
        return (bucket(max(len(o) for o in self.owned) + 1),  # >= 1 owned padding row
                bucket(max([len(n) for row in self.needs for n in row] + [1])),
                bucket(max(len(e) for e in self.edges)))


def _plan(batch: jraph.GraphsTuple, parts: int, owner: np.ndarray | None,
          method: str = "bisect") -> _Plan:
    if parts < 1:
        raise ValueError(f"parts={parts}: the graph axis needs at least one device.")
    glob = batch.globals if isinstance(batch.globals, dict) else {}
    for key in ("kspace", "qm"):
        if key in glob:
            raise ValueError(
                f"The batch carries {key!r} targets, which need each structure's whole H on "
                "one device: train band / orbital losses with config.parallel.graph_devices=1.")
    check_padding_graph(batch)
    species = np.asarray(batch.nodes["species"])
    senders, receivers = np.asarray(batch.senders), np.asarray(batch.receivers)
    real_edge = species[senders] > 0
    owner = _owners(batch, parts, method) if owner is None else np.asarray(owner, np.int32)
    if owner.shape != species.shape:
        raise ValueError(f"owner has shape {owner.shape}, the batch {species.shape[0]} rows.")
    owned = [np.flatnonzero(owner == p) for p in range(parts)]
    edges = [np.flatnonzero(real_edge & (owner[receivers] == p)) for p in range(parts)]
    needs = [[np.unique(senders[e][owner[senders[e]] == q]) if q != p else
              np.zeros(0, np.int64) for q in range(parts)] for p, e in enumerate(edges)]
    return _Plan(owner, owned, edges, needs)


def partition_batch(batch: jraph.GraphsTuple, parts: int, owner: np.ndarray | None = None,
                    sizes: tuple[int, int, int] | None = None, method: str = "bisect"
                    ) -> PartitionedBatch:
    """Splits one padded batch (numpy, no device axis) into ``parts`` local batches.

    Args:
      batch: a padded batch from :func:`helm_jax.data.batching.pad_batch` (its last graph
        a padding graph).
      parts: ``P``, the size of the ``graph`` mesh axis.
      owner: optional part of every row (-1 on padding); default: ``method`` on each
        structure, edge-balanced.
      sizes: optional smallest ``(owned rows, halo width, local edges)`` (to give several
        batches one shape; :func:`partition_batches`).
      method: ``"bisect"`` (:func:`bisect`, no dependency) or ``"metis"`` (:func:`metis`,
        5-20 % smaller halos on water boxes; needs ``pymetis``).

    Returns:
      :class:`PartitionedBatch`; its ``graph`` has every array stacked ``[P, ...]``.

    Raises:
      ValueError: ``parts < 1``, a batch without a padding graph, or one carrying k-space
        or QM targets (band and orbital losses need each structure's whole H on one device).
    """
    plan = _plan(batch, parts, owner, method)
    return _partition(batch, parts, plan, sizes)


def partition_batches(batches: Sequence[jraph.GraphsTuple], parts: int,
                      method: str = "bisect", owners: Sequence[np.ndarray] | None = None
                      ) -> list[PartitionedBatch]:
    """:func:`partition_batch` of several batches with one common shape (for the ``data``
    axis: stack their graphs with :func:`stack_parts`); ``owners``: each batch's part of
    every row (e.g. from cached :func:`structure_owner` results), else computed."""
    owners = [None] * len(batches) if owners is None else owners
    plans = [_plan(b, parts, o, method) for b, o in zip(batches, owners)]
    sizes = tuple(np.max([p.sizes() for p in plans], axis=0).tolist())
    return [_partition(b, parts, p, sizes) for b, p in zip(batches, plans)]


def _partition(batch, parts: int, plan: _Plan, sizes) -> PartitionedBatch:
    species = np.asarray(batch.nodes["species"])
    n_rows = len(species)
    graph_of_row = np.repeat(np.arange(len(batch.n_node)), np.asarray(batch.n_node))
    n_graph = len(batch.n_node)
    n_own, width, n_edge_loc = plan.sizes() if sizes is None else tuple(
        max(a, b) for a, b in zip(plan.sizes(), sizes))
    n_loc = n_own + parts * width
    pad_row = n_own - 1  # an owned padding row: species 0, zero features

    node_rows = np.full((parts, n_loc), -1, np.int64)
    edge_rows = np.full((parts, n_edge_loc), -1, np.int64)
    send = np.full((parts, parts, width), pad_row, np.int32)
    local_of = np.full(n_rows, -1, np.int64)  # batch row -> owned local row in its owner
    for p in range(parts):
        local_of[plan.owned[p]] = np.arange(len(plan.owned[p]))
    locals_, halo_counts = [], []
    for p in range(parts):
        owned, e = plan.owned[p], plan.edges[p]
        gather = np.full(n_loc, -1, np.int64)  # batch row of every local row
        gather[:len(owned)] = owned
        to_local = np.full(n_rows, -1, np.int64)
        to_local[owned] = np.arange(len(owned))
        for q in range(parts):
            rows = plan.needs[p][q]
            slots = n_own + q * width + np.arange(len(rows))
            gather[slots] = rows
            to_local[rows] = slots
            send[q, p, :len(rows)] = local_of[rows]
        halo_counts.append(sum(len(r) for r in plan.needs[p]))
        node_rows[p, :len(owned)] = owned
        edge_rows[p, :len(e)] = e
        locals_.append(_local_batch(batch, gather, len(owned), e, to_local, n_edge_loc,
                                    pad_row, graph_of_row, n_graph))
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *locals_)
    stacked = stacked._replace(globals={**stacked.globals, "halo_send": send})
    return PartitionedBatch(graph=stacked, node_rows=node_rows, edge_rows=edge_rows,
                            halo_nodes=np.asarray(halo_counts), halo_width=width,
                            owner=plan.owner)


# Node fields copied to halo rows (the model computes with them); every other node field
# (labels, force labels and masks) is zero there, so losses count each atom on its owner.
_HALO_FIELDS = ("species", "positions")


def _local_batch(batch, gather, num_owned, edges, to_local, n_edge_loc, pad_row,
                 graph_of_row, n_graph) -> jraph.GraphsTuple:
    """One part's padded batch: rows ``gather`` (-1: padding), edges ``edges``."""
    halo = np.zeros(len(gather), bool)
    halo[num_owned:] = gather[num_owned:] >= 0

    def node_field(name, x):
        x = np.asarray(x)
        out = np.zeros((len(gather),) + x.shape[1:], x.dtype)
        keep = gather >= 0
        if name not in _HALO_FIELDS:
            keep = keep & ~halo
        out[keep] = x[gather[keep]]
        return out

    def edge_field(x):
        x = np.asarray(x)
        out = np.zeros((n_edge_loc,) + x.shape[1:], x.dtype)
        out[:len(edges)] = x[edges]
        return out

    nodes = {k: node_field(k, v) for k, v in batch.nodes.items()}
    edge_dict = ({k: edge_field(v) for k, v in batch.edges.items()}
                 if isinstance(batch.edges, dict) else batch.edges)
    senders = np.full(n_edge_loc, pad_row, np.int32)
    receivers = np.full(n_edge_loc, pad_row, np.int32)
    senders[:len(edges)] = to_local[np.asarray(batch.senders)[edges]]
    receivers[:len(edges)] = to_local[np.asarray(batch.receivers)[edges]]
    assert (senders >= 0).all() and (receivers >= 0).all()
    owned_graph = graph_of_row[gather[:num_owned]]
    n_node = np.bincount(owned_graph, minlength=n_graph).astype(np.int32)
    n_edge = np.bincount(graph_of_row[np.asarray(batch.receivers)[edges]],
                         minlength=n_graph).astype(np.int32)
    # Owned padding rows and halo rows belong to the padding graph (the last one).
    n_node[-1] += len(gather) - num_owned
    n_edge[-1] += n_edge_loc - len(edges)
    if num_owned and (np.diff(owned_graph) < 0).any():
        raise AssertionError("owned rows must stay in graph order")
    return jraph.GraphsTuple(nodes=nodes, edges=edge_dict, globals=dict(batch.globals),
                             senders=senders, receivers=receivers, n_node=n_node,
                             n_edge=n_edge)


def check_padding_graph(batch: jraph.GraphsTuple) -> None:
    """Raises ValueError unless the batch's last graph is a padding graph (no labels):
    halo rows are put there."""
    glob = batch.globals
    for key in ("h_mask", "energy_mask"):
        if key in glob and bool(np.asarray(glob[key])[-1]):
            raise ValueError(f"The batch's last graph has {key} set: pad batches with at "
                             "least one padding graph (Budget.n_graph = molecules + 1).")


def halo_exchange_of(globals_: Any) -> HaloExchange | None:
    """The :class:`HaloExchange` of one part's batch globals, or None (no graph axis)."""
    if isinstance(globals_, dict) and "halo_send" in globals_:
        return HaloExchange(globals_["halo_send"])
    return None


def stack_parts(parts: Sequence[PartitionedBatch]) -> jraph.GraphsTuple:
    """``[D, P, ...]``: the partitioned batches of ``D`` data-parallel devices (from
    :func:`partition_batches`, which gives them one shape)."""
    try:
        return jax.tree.map(lambda *xs: np.stack(xs), *[p.graph for p in parts])
    except ValueError as err:
        raise ValueError("Partitioned batches of different shapes cannot be stacked: "
                         f"partition them together with partition_batches ({err}).") from err


def _per_device_outputs(model, need: frozenset, axes: tuple[str, ...]):
    """``(params, stacked parts) -> outputs [*mesh, ...]`` for ``jax.shard_map``."""
    from helm_jax import losses  # pylint: disable=import-outside-toplevel (losses imports helm)

    def fn(params, batch):
        batch = jax.tree.map(lambda x: x[(0,) * len(axes)], batch)
        out = losses.model_outputs(model, params, batch, set(need))
        return jax.tree.map(lambda x: x[(None,) * len(axes)], out)
    return fn


class GraphParallelModel:
    """Inference of one model over the ``('data', 'graph')`` mesh: each padded batch is
    split over the ``graph`` axis and the outputs come back in the batch's order.

    Args:
      model: a :class:`helm_jax.model.helm.HELM`.
      mesh: a mesh from ``parallel.make_mesh(n, graph_devices=P)`` (``data`` axis 1 for
        one structure at a time; larger ``data`` axes take that many batches per call).
      need: the outputs (:data:`helm_jax.losses.OUTPUTS` subset: ``hamiltonian``,
        ``energy``, ``forces``).
      method: the partitioner (:data:`PARTITIONERS`).
    """

    def __init__(self, model, mesh: jax.sharding.Mesh, need=("hamiltonian", "energy"),
                 method: str = "bisect"):
        from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
        if GRAPH_AXIS not in mesh.axis_names:
            raise ValueError(f"The mesh {dict(mesh.shape)} has no {GRAPH_AXIS!r} axis: build "
                             "it with parallel.make_mesh(n, graph_devices=P) and P > 1.")
        self.mesh, self.parts, self.method = mesh, int(mesh.shape[GRAPH_AXIS]), method
        self.data = int(np.prod([mesh.shape[a] for a in mesh.axis_names if a != GRAPH_AXIS]))
        axes = tuple(mesh.axis_names)
        spec = P(*axes)
        fn = _per_device_outputs(model, frozenset(need), axes)
        self._fn = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), spec),
                                         out_specs=spec))

    def partition(self, batches: Sequence[jraph.GraphsTuple]) -> list[PartitionedBatch]:
        """One partitioned batch per ``data`` device (same shapes)."""
        if len(batches) != self.data:
            raise ValueError(f"Give {self.data} batches (the mesh's data axis), not "
                             f"{len(batches)}.")
        return partition_batches(batches, self.parts, self.method)

    def lower(self, params, parts: Sequence[PartitionedBatch]):
        """The lowered program (``.compile().memory_analysis()`` gives per-device memory)."""
        from helm_jax import parallel  # pylint: disable=import-outside-toplevel
        return self._fn.lower(parallel.replicate(params, self.mesh),
                              parallel.shard(stack_parts(parts), self.mesh))

    def __call__(self, params, batches: Sequence[jraph.GraphsTuple],
                 parts: Sequence[PartitionedBatch] | None = None) -> list[dict[str, np.ndarray]]:
        """Outputs of each batch in its own row order: ``node_h [N, ...]``, ``edge_h
        [E, ...]``, ``forces [N, 3]`` (owned rows; zeros on padding) and ``energy [G]``."""
        from helm_jax import parallel  # pylint: disable=import-outside-toplevel
        parts = self.partition(batches) if parts is None else parts
        out = jax.device_get(self._fn(parallel.replicate(params, self.mesh),
                                      parallel.shard(stack_parts(parts), self.mesh)))
        results = []
        for d, (batch, pb) in enumerate(zip(batches, parts)):
            n, e = len(batch.nodes["species"]), len(batch.senders)
            res = {}
            for key, x in out.items():
                x = np.asarray(x).reshape((self.data, self.parts) + np.shape(x)[2:])[d]
                if key == "energy":
                    res[key] = x[0]  # every part holds the whole energies
                elif key.startswith("edge"):
                    res[key] = pb.edges_to_batch(x, e)
                else:
                    res[key] = pb.nodes_to_batch(x, n)
            results.append(res)
        return results
