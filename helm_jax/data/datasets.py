"""The data of a run from its ``config.data`` section: reader, template, splits, statistics.

``config.data`` fields:
  path: a dataset file, or ``"embedded"`` for the shipped default dataset.
  kind: reader kind (None: detected, see ``helm_jax.data.readers``).
  elements: atomic numbers of the template (None: scanned from the data; OMol_CSH: its 58).
  split_seed, split: sizes (ints) or fractions (floats < 1) of train/val/test; ``None`` for
    test means the rest (see ``helm_jax.data.splits``).
  node_reference: per-element reference of the l = 0 node labels, ``"shift"`` (mean) or
    ``"standardize"`` (mean and standard deviation); see ``helm_jax.data.statistics``.
  split_order: ``"random"`` (seeded by split_seed) or ``"contiguous"`` (file order).
  batch: ``molecules_per_batch`` or ``edges_per_batch``, ``num_buckets``.
  cache_graphs: keep built graphs in memory (small datasets).
  embedded_limit: label only the first N embedded structures (quick test configs; with
    ``embedded_open_shell``, the first N of each set).
  embedded_open_shell: with ``path="embedded"``, add the embedded open-shell and charged
    species (``helm_jax/data/embedded/open_shell.extxyz``; records keyed ``1:<key>``).
  embedded_periodic: with ``path="embedded"`` and ``periodic``, an embedded periodic set
    (``"graphene"``, ``"hbn"``, ``"diamond"``, ``"small"``; labelled on first use,
    :func:`helm_jax.data.embedded.ensure_labelled_periodic`).
  periodic: the data are periodic structures (a periodic HDF5 file of
    ``data_prep/label.py --kmesh``); graphs get edges to every periodic image within the
    cutoff (docs/periodic.md).
  band_targets: with ``periodic``, attach the band energies on the labels' k-mesh to each
    graph (the band losses and metrics need them).
  conduction_bands: conduction bands above the occupied ones in the band targets.
  fermi_reference: with ``periodic``, learn ``H - mu S`` (bands relative to each cell's Fermi
    level) instead of raw H (:func:`helm_jax.data.graphs.fermi_referenced`).
  reader_options: keyword options of the reader (e.g. ``{"basis": "gth-dzvp"}`` for the
    DeepH and CP2K readers).

What the graphs hold beyond that (cutoff, node-block layout, quantum-chemistry targets,
spin-resolved labels, the charge/spin checks of the model's conditioning) comes
from the model and its losses, so it is passed in explicitly as a :class:`GraphSpec`'s
options (``helm_jax.train.load_data`` does it from a whole config).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import parallel
from helm_jax.data import embedded, pipeline, readers
from helm_jax.data import splits as splits_lib
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
    periodic_set = data_cfg.get("embedded_periodic", "")
    if periodic_set:
        if path != "embedded" or not data_cfg.get("periodic", False):
            raise ValueError(f"config.data.embedded_periodic={periodic_set!r} needs "
                             "config.data.path='embedded' and config.data.periodic=True.")
        path = embedded.ensure_labelled_periodic(periodic_set, limit=data_cfg.embedded_limit)
        return readers.open_dataset(path, periodic=True)
    if path == "embedded":
        path = embedded.ensure_labelled(limit=data_cfg.embedded_limit)
        if data_cfg.get("embedded_open_shell", False):
            radicals = embedded.ensure_labelled(geometries=embedded.OPEN_SHELL_GEOMETRIES,
                                                limit=data_cfg.embedded_limit)
            return readers.ConcatReader([readers.open_dataset(path),
                                         readers.open_dataset(radicals)])
    elif data_cfg.get("embedded_open_shell", False):
        raise ValueError(f"config.data.embedded_open_shell needs config.data.path='embedded', "
                         f"not {path!r}: concatenate your own files with "
                         "helm_jax.data.readers.ConcatReader instead.")
    options = dict(data_cfg.get("reader_options") or {})
    if data_cfg.get("periodic", False) and (data_cfg.kind or readers.detect_kind(path)) == "h5":
        options["periodic"] = True
    return readers.open_dataset(path, kind=data_cfg.kind, **options)


def scan_elements(reader) -> list[int]:
    """Sorted atomic numbers present in a dataset (reads every record's elements)."""
    if getattr(reader, "kind", "") == "omol_csh":
        return list(basis_lib.OMOL_CSH_ELEMENTS)
    found: set[int] = set()
    for i in range(len(reader)):
        found.update(int(z) for z in reader[i].elements)
    return sorted(found)


def load_data(data_cfg: ml_collections.ConfigDict, *, cutoff: float, reduced_nodes: bool,
              qm_targets: str = "", qm_polarizability_ff: bool = False,
              spin_resolved: bool = False, charge_spin_embedding: bool | None = None,
              workdir: str | None = None) -> Data:
    """Opens the data, builds the template and splits, and computes (or loads) statistics.

    Args:
      data_cfg: the ``config.data`` section (fields in the module docstring).
      cutoff, reduced_nodes, qm_targets, qm_polarizability_ff, spin_resolved,
        charge_spin_embedding: the graphs' options (:class:`helm_jax.data.graphs.GraphSpec`;
        statistics over both spins' labels with ``spin_resolved``).
      workdir: the run's directory (None: nothing is saved).

    Statistics are cached as ``<workdir>/statistics.json`` so a resumed run uses exactly the
    same references; the split (:func:`helm_jax.data.splits.from_config`) is saved with them
    as ``<workdir>/splits.json`` for evaluation.
    """
    reader = open_reader(data_cfg)
    elements = data_cfg.elements or scan_elements(reader)
    template = basis_lib.make_template(elements, reader.basis, reader.ecp)
    periodic = bool(data_cfg.get("periodic", False))
    spec = GraphSpec(template, cutoff=float(cutoff), reduced_nodes=bool(reduced_nodes),
                     qm_targets=qm_targets, qm_polarizability_ff=bool(qm_polarizability_ff),
                     spin_resolved=bool(spin_resolved),
                     charge_spin_embedding=charge_spin_embedding, periodic=periodic,
                     bands=periodic and bool(data_cfg.get("band_targets", False)),
                     conduction_bands=int(data_cfg.get("conduction_bands", 2)),
                     fermi_reference=periodic and bool(data_cfg.get("fermi_reference", False)))
    graphs = pipeline.GraphDataset(reader, spec, with_labels=True,
                                   cache=bool(data_cfg.cache_graphs))
    splits = splits_lib.from_config(data_cfg, reader)
    stats_path = os.path.join(workdir, "statistics.json") if workdir else None
    if stats_path and os.path.exists(stats_path):
        stats = Statistics.load(stats_path)
    else:
        stats = compute_statistics((graphs[i] for i in splits["train"]), spec.node_layout,
                                   node_reference=data_cfg.node_reference,
                                   edge_layout=spec.edge_layout,
                                   spin_resolved=spec.spin_resolved)
        if stats_path and parallel.is_main_process():  # every process computed the same
            os.makedirs(workdir, exist_ok=True)
            stats.save(stats_path)
            splits_lib.save(workdir, splits)
    return Data(reader=reader, template=template, spec=spec, graphs=graphs, splits=splits,
                stats=stats)


def batch_config(data_cfg: ml_collections.ConfigDict) -> pipeline.BatchConfig:
    """``config.data.batch`` as a :class:`pipeline.BatchConfig`."""
    b = data_cfg.batch
    return pipeline.BatchConfig(molecules_per_batch=b.molecules_per_batch,
                                edges_per_batch=b.edges_per_batch,
                                num_buckets=int(b.num_buckets), budgets=b.get("budgets"))
