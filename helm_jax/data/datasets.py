"""Everything the training loop needs from ``config.data``: reader, template, splits, statistics.

``config.data`` fields:
  path: a dataset file, or ``"embedded"`` for the shipped default dataset.
  kind: reader kind (None: detected, see ``helm_jax.data.readers``).
  elements: atomic numbers of the template (None: scanned from the data; OMol_CSH: its 58).
  split_seed, split: sizes (ints) or fractions (floats < 1) of train/val/test; ``None`` for
    test means the rest.
  node_reference: per-element reference of the l = 0 node labels, ``"shift"`` (mean) or
    ``"standardize"`` (mean and standard deviation); see ``helm_jax.data.statistics``.
  split_order: ``"random"`` (seeded by split_seed) or ``"contiguous"`` (file order).
  batch: ``molecules_per_batch`` or ``edges_per_batch``, ``num_buckets``.
  cache_graphs: keep built graphs in memory (small datasets).
  embedded_limit: label only the first N embedded structures (quick test configs).

``config.qm`` (quantum-chemistry targets): with ``enabled``, graphs carry ``QMLabels`` with
``targets`` ("reference" or "large_basis") and, with ``self_consistent_polarizability``, the
finite-field polarisability as target.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import parallel
from helm_jax.data import embedded, pipeline, readers
from helm_jax.data.graphs import GraphSpec
from helm_jax.data.statistics import Statistics, compute_statistics


@dataclasses.dataclass
class Data:
    """A dataset ready for training.

    Attributes:
      reader: the record reader.
      template: basis template of the model's blocks.
      spec: graph spec (template, cutoff, node layout).
      graphs: graph dataset over the reader.
      splits: ``{"train", "val", "test"}`` -> structure indices.
      stats: per-element statistics of the training split.
    """

    reader: object
    template: basis_lib.Template
    spec: GraphSpec
    graphs: pipeline.GraphDataset
    splits: dict[str, np.ndarray]
    stats: Statistics


def open_reader(data_cfg: ml_collections.ConfigDict):
    """The reader of ``data_cfg.path`` (labelling the embedded dataset on first use)."""
    path = data_cfg.path
    if path == "embedded":
        path = embedded.ensure_labelled(limit=data_cfg.get("embedded_limit"))
    return readers.open_dataset(path, kind=data_cfg.get("kind"))


def scan_elements(reader) -> list[int]:
    """Sorted atomic numbers present in a dataset (reads every record's elements)."""
    if getattr(reader, "kind", "") == "omol_csh":
        return list(basis_lib.OMOL_CSH_ELEMENTS)
    found: set[int] = set()
    for i in range(len(reader)):
        found.update(int(z) for z in reader[i].elements)
    return sorted(found)


def split_sizes(n: int, split: dict) -> dict[str, int | None]:
    """Turns fractions (< 1) into counts; keeps ints and None."""
    out = {}
    for name, v in split.items():
        out[name] = None if v is None else (int(round(v * n)) if isinstance(v, float) and v < 1
                                            else int(v))
    return out


def load_data(config: ml_collections.ConfigDict, workdir: str | None = None) -> Data:
    """Opens the data, builds the template and splits, and computes (or loads) statistics.

    Statistics are cached as ``<workdir>/statistics.json`` so a resumed run uses exactly the
    same references.
    """
    reader = open_reader(config.data)
    elements = config.data.get("elements") or scan_elements(reader)
    template = basis_lib.make_template(elements, reader.basis, reader.ecp)
    qm = config.qm
    spec = GraphSpec(template, cutoff=float(config.model.cutoff),
                     reduced_nodes=bool(config.heads.reduced_nodes),
                     qm_targets=qm.targets if qm.enabled else "",
                     qm_polarizability_ff=bool(qm.self_consistent_polarizability))
    graphs = pipeline.GraphDataset(reader, spec, with_labels=True,
                                   cache=bool(config.data.get("cache_graphs", True)))
    split = dict(config.data.split)
    splits = reader.splits(seed=int(config.data.split_seed),
                           sizes=split_sizes(len(reader.converged_indices()), split),
                           order=config.data.get("split_order", "random"))
    stats_path = os.path.join(workdir, "statistics.json") if workdir else None
    if stats_path and os.path.exists(stats_path):
        stats = Statistics.load(stats_path)
    else:
        stats = compute_statistics((graphs[i] for i in splits["train"]), spec.node_layout,
                                   node_reference=config.data.get("node_reference", "shift"),
                                   edge_layout=spec.edge_layout)
        if stats_path and parallel.is_main_process():  # every process computed the same
            os.makedirs(workdir, exist_ok=True)
            stats.save(stats_path)
            with open(os.path.join(workdir, "splits.json"), "w") as f:
                json.dump({k: [int(i) for i in v] for k, v in splits.items()}, f)
    return Data(reader=reader, template=template, spec=spec, graphs=graphs, splits=splits,
                stats=stats)


def batch_config(data_cfg: ml_collections.ConfigDict) -> pipeline.BatchConfig:
    """``config.data.batch`` as a :class:`pipeline.BatchConfig`."""
    b = data_cfg.batch
    return pipeline.BatchConfig(molecules_per_batch=b.get("molecules_per_batch"),
                                edges_per_batch=b.get("edges_per_batch"),
                                num_buckets=int(b.get("num_buckets", 3)),
                                budgets=b.get("budgets"))
