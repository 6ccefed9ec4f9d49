"""From a reader to device-ready batches: graph cache, size scan, deterministic epochs, prefetch.

``GraphDataset`` turns any reader (``__len__``, ``__getitem__ -> Record``) into graphs with
labels, optionally caching them in memory. ``BatchIterator`` yields, for ``n_devices``
devices, padded batches stacked on a leading axis ``[n_devices, ...]``; every step's
per-device batches share one bucket budget, so each bucket compiles once. The order is a
pure function of ``(seed, epoch)``: the iterator's state is just ``{epoch, step}``, saved in
checkpoints and restored exactly. A background thread prefetches the next batches.
With quantum-chemistry labels (``GraphSpec.qm_targets``) each bucket's budget also fixes the
padded AO count ``n_ao``: that of the bucket's largest molecule unless the budget names one.
With ``GraphSpec.spin_resolved`` the batches also carry the beta labels ``h_beta``
(:func:`helm_jax.data.batching.pad_batch`).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator, Sequence

import jraph
import numpy as np

from helm_jax import graph_parallel
from helm_jax.data import batching
from helm_jax.data.graphs import GraphSpec, MolGraph, build_graph, radius_edges
from helm_jax.data.statistics import Statistics


class GraphDataset:
    """Graphs built on demand from a reader, with an optional in-memory cache.

    Args:
      reader: random-access dataset of :class:`helm_jax.data.records.Record`.
      spec: template, cutoff and label layout.
      with_labels: build Hamiltonian labels.
      cache: keep built graphs in memory (small datasets).
      validate: check each record's geometry again when its graph is built. The readers of
        :mod:`helm_jax.data.readers` validate every record they yield
        (:func:`helm_jax.data.geometry.validate_structure`), so the default checks each
        record once; set it for a reader of unchecked records.
    """

    def __init__(self, reader, spec: GraphSpec, with_labels: bool = True, cache: bool = True,
                 validate: bool = False):
        self.reader = reader
        self.spec = spec
        self.with_labels = with_labels
        self.validate = validate
        self._cache: dict[int, MolGraph] | None = {} if cache else None
        self._sizes: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> MolGraph:
        i = int(i)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        g = build_graph(self.reader[i], self.spec, with_labels=self.with_labels,
                        validate=self.validate)
        if self._cache is not None:
            self._cache[i] = g
        return g

    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(n_nodes [M], n_edges [M])`` of every structure (scanned once)."""
        if self._sizes is None:
            nn, ne = np.zeros(len(self), np.int64), np.zeros(len(self), np.int64)
            for i in range(len(self)):
                if self.spec is not None and self.spec.periodic:  # edges need the cell
                    g = self[i]
                    nn[i], ne[i] = g.n_node, g.n_edge
                    continue
                if self._cache is not None and i in self._cache:
                    g = self._cache[i]
                    nn[i], ne[i] = g.n_node, g.n_edge
                    continue
                coords = _coords(self.reader, i)
                nn[i] = len(coords)
                ne[i] = len(radius_edges(coords, self.spec.cutoff)[0])
            self._sizes = (nn, ne)
        return self._sizes


def _coords(reader, i: int) -> np.ndarray:
    """Coordinates of structure i, cheaply when the reader offers ``coords(i)``."""
    if hasattr(reader, "coords"):
        return np.asarray(reader.coords(i))
    return np.asarray(reader[i].coords)


@dataclasses.dataclass
class BatchConfig:
    """Batch shapes and order.

    Attributes:
      molecules_per_batch / edges_per_batch: per-device batch size policy (one of them).
      num_buckets: size buckets (compiled shapes).
      budgets: explicit budgets (overrides the scan) as a list of dicts.
    """

    molecules_per_batch: int | None = 1
    edges_per_batch: int | None = None
    num_buckets: int = 3
    budgets: list | None = None


class BatchIterator:
    """Deterministic, resumable, prefetching iterator of stacked padded batches.

    Args:
      data: the graph dataset.
      indices: the split's structure indices.
      batch: batch policy.
      n_devices: per-step batches (leading axis of every array).
      seed: shuffle seed; the epoch order is ``rng(seed, epoch)``.
      shuffle: shuffle molecules and batches each epoch (False for evaluation).
      stats: energies are shipped as ``E - E_ref`` (float64 on host, then cast).
      dtype: float dtype of positions and labels.
      prefetch: batches prepared ahead by a background thread (0: none).
      graph_parts: ``P > 1`` splits every device batch into ``P`` parts for the ``graph``
        mesh axis (:func:`helm_jax.graph_parallel.partition_batches`, in the prefetch
        thread; ``partitioner``: :data:`helm_jax.graph_parallel.PARTITIONERS`): arrays then
        lead with ``[n_devices, P]``.
    """

    def __init__(self, data: GraphDataset, indices: Sequence[int], batch: BatchConfig,
                 n_devices: int = 1, seed: int = 0, shuffle: bool = True,
                 stats: Statistics | None = None, dtype=np.float32, prefetch: int = 2,
                 graph_parts: int = 1, partitioner: str = "bisect"):
        self.data = data
        self.graph_parts, self.partitioner = int(graph_parts), partitioner
        self._owner_cache: dict[int, np.ndarray] = {}  # structure -> part of each atom
        self.indices = np.asarray(indices, np.int64)
        self.n_devices = n_devices
        self.seed = seed
        self.shuffle = shuffle
        self.stats = stats
        self.dtype = dtype
        self.prefetch = prefetch
        nn, ne = data.sizes()
        self._nn, self._ne = nn, ne
        sub_n, sub_e = nn[self.indices], ne[self.indices]
        if batch.budgets:
            self.budgets = [batching.Budget(**b) for b in batch.budgets]
            self._bucket = np.array([_first_fit(self.budgets, n, e)
                                     for n, e in zip(sub_n, sub_e)], np.int64)
        else:
            self.budgets, self._bucket = batching.plan_budgets(
                sub_n, sub_e, batch.num_buckets, batch.molecules_per_batch,
                batch.edges_per_batch)
        if data.spec is not None and data.spec.qm_targets:
            self.budgets = _with_n_ao(self.budgets, self._bucket,
                                      np.array([data[i].qm.n_ao for i in self.indices]))
        if data.spec is not None and data.spec.bands and data.with_labels:
            self.budgets = _with_kspace(self.budgets, self._bucket,
                                        [data[i] for i in self.indices], data.spec.template)
        with_h = data.with_labels and data.spec is not None
        self.node_dim = data.spec.node_layout.dim if with_h else None
        self.edge_dim = data.spec.edge_layout.dim if with_h else None
        self.spin_resolved = bool(with_h and data.spec.spin_resolved)
        self.periodic = bool(data.spec is not None and data.spec.periodic)
        self.epoch, self.step = 0, 0
        self._plan_cache: tuple[int, list] | None = None

    # -- order ----------------------------------------------------------------------------

    def plan(self, epoch: int) -> list[tuple[int, list[list[int]]]]:
        """The epoch's steps: ``(bucket, [per-device structure indices])``."""
        if self._plan_cache and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        steps = []
        for b, budget in enumerate(self.budgets):
            pos = np.nonzero(self._bucket == b)[0]
            if self.shuffle:
                pos = rng.permutation(pos)
            members = self.indices[pos]
            packed = batching.pack_greedy(members, self._nn, self._ne, budget)
            while len(packed) % self.n_devices:
                packed.append([])  # all-padding batch: no data dropped, shapes fixed
            for k in range(0, len(packed), self.n_devices):
                steps.append((b, packed[k:k + self.n_devices]))
        if self.shuffle:
            steps = [steps[i] for i in rng.permutation(len(steps))]
        self._plan_cache = (epoch, steps)
        return steps

    # -- state ----------------------------------------------------------------------------

    def get_state(self) -> dict:
        """The position of the next batch: ``{"epoch", "step"}``."""
        return {"epoch": int(self.epoch), "step": int(self.step)}

    def set_state(self, state: dict) -> None:
        """Restores a position from :meth:`get_state`."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    # -- batches --------------------------------------------------------------------------

    def make_batch(self, bucket: int, per_device: list[list[int]], partition: bool = True
                   ) -> jraph.GraphsTuple:
        """Builds one stacked step batch (split for the ``graph`` axis unless
        ``partition`` is False)."""
        out = []
        for idx in per_device:
            graphs = [self._graph(i) for i in idx]
            out.append(batching.pad_batch(graphs, self.budgets[bucket], self.node_dim,
                                          self.edge_dim, self.dtype,
                                          spin_resolved=self.spin_resolved,
                                          periodic=self.periodic,
                                          template=self.data.spec.template
                                          if self.data.spec is not None else None))
        if partition and self.graph_parts > 1:
            owners = [self._batch_owner(idx, len(b.nodes["species"]))
                      for idx, b in zip(per_device, out)]
            return graph_parallel.stack_parts(graph_parallel.partition_batches(
                out, self.graph_parts, self.partitioner, owners))
        return batching.stack_device_batches(out)

    def _batch_owner(self, idx: list[int], n_rows: int) -> np.ndarray:
        """Part of every row of a batch of structures ``idx`` (-1: padding), from each
        structure's partition, computed once per structure and cached."""
        owner = np.full(n_rows, -1, np.int32)
        start = 0
        for i in idx:
            if i not in self._owner_cache:
                g = self.data[i]
                self._owner_cache[i] = graph_parallel.structure_owner(
                    g.positions, g.senders, g.receivers, self.graph_parts, self.partitioner)
            part = self._owner_cache[i]
            owner[start:start + len(part)] = part
            start += len(part)
        return owner

    def _graph(self, i: int) -> MolGraph:
        g = self.data[i]
        if self.stats is not None and np.isfinite(g.energy):
            g = dataclasses.replace(g, energy=g.energy - self.stats.reference_energy(g.species))
        return g

    def _positions(self) -> Iterator[tuple[int, int]]:
        epoch, step = self.epoch, self.step
        while True:
            steps = self.plan(epoch)
            if step >= len(steps):
                epoch, step = epoch + 1, 0
                continue
            yield epoch, step
            step += 1

    def __iter__(self) -> Iterator[jraph.GraphsTuple]:
        """Endless iterator over epochs from the current state."""
        positions = self._positions()
        if self.prefetch <= 0:
            for epoch, step in positions:
                batch = self.make_batch(*self.plan(epoch)[step])
                self.epoch, self.step = (epoch, step + 1)
                yield batch
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def work():
            try:
                for epoch, step in positions:
                    item = (epoch, step, self.make_batch(*self.plan(epoch)[step]))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except Exception as err:  # surfaced in the consumer thread
                q.put(err)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, Exception):
                    raise item
                epoch, step, batch = item
                self.epoch, self.step = epoch, step + 1
                yield batch
        finally:
            stop.set()

def _with_n_ao(budgets: list[batching.Budget], bucket_of: np.ndarray,
               n_aos: np.ndarray) -> list[batching.Budget]:
    """Budgets with ``n_ao`` set to the largest molecule of each bucket (unless given)."""
    return [dataclasses.replace(b, n_ao=b.n_ao or int(n_aos[bucket_of == k].max(initial=0)))
            for k, b in enumerate(budgets)]


def _with_kspace(budgets: list[batching.Budget], bucket_of: np.ndarray,
                 graphs: Sequence[MolGraph], template) -> list[batching.Budget]:
    """Budgets with the k-space sizes (``n_ao``, ``n_k``, ``n_entries``) of each bucket's
    largest periodic graph (unless given): :func:`helm_jax.data.batching.pad_kspace`."""
    sizes = np.array([batching.kspace_sizes(g, template) for g in graphs], np.int64)
    out = []
    for k, b in enumerate(budgets):
        top = sizes[bucket_of == k].max(axis=0, initial=0)
        out.append(dataclasses.replace(b, n_ao=b.n_ao or int(top[0]),
                                       n_k=b.n_k or int(top[1]),
                                       n_entries=b.n_entries or int(top[2])))
    return out


def _first_fit(budgets, n, e) -> int:
    for b, budget in enumerate(budgets):
        if budget.fits(n, e, 1):
            return b
    raise batching.BudgetError(
        f"A molecule with {n} atoms and {e} edges fits none of the budgets "
        f"{[b.to_dict() for b in budgets]}: give larger batches "
        "(--config.data.batch.edges_per_batch=N above this molecule's edges, or a larger "
        "--config.data.batch.molecules_per_batch) or a smaller --config.model.cutoff.")
