"""Evaluation of predicted Hamiltonians on periodic structures: real-space blocks and bands.

    summary = evaluate_periodic(model, params, data, split="test", workdir=workdir)

Conventions are those of docs/periodic.md (:mod:`helm_jax.data.periodic`): the model
predicts the block ``H_ij(T)`` of every directed edge ``(i, j, T)`` of a periodic graph
(atom i in the home cell, atom j in the cell shifted by T) and the on-site blocks
``H_ii(0)``; ``H(k) = sum_T exp(+2 pi i k . T) H(T)`` with k fractional. Host-side numpy and
PySCF, one jitted model call per structure.

**Predicted blocks** (:func:`predicted_blocks`, :func:`hermitian_blocks`): node outputs are
de-standardised, irreps become blocks in PySCF AO order, and every edge block is
Hermitised with its reverse edge, ``B(i, j, T) <- (B(i, j, T) + B(j, i, -T)^T) / 2`` (the
image-pair graph always holds both), on-site blocks ``(B + B^T) / 2``. They are returned as
:class:`helm_jax.data.records.PeriodicLabels` (weight 1 per edge: an image-pair graph holds
each physical T once), so ``periodic.labels_to_k`` Bloch-sums them like stored labels.

**Metrics per structure** (Eh inside, meV in the outputs; :data:`METRIC_DOC`):

* Real space: MAE of H over the labelled entries (on-site blocks and the edges whose
  ``(i, j, T)`` the labels store), overall, on-site, and per neighbour shell. Shells are
  fixed distance bins of ``shell_width`` Angstrom (default 1 A): edge length d falls in
  ``[n w, (n + 1) w)``, keyed ``"1-2A"`` and so on (h-BN: 1.45 A nearest B-N neighbours in
  1-2 A, the 2.50 A and 2.89 A shells in 2-3 A). An edge's target is the block the model is
  trained on, the stored block times its Bloch weight (``graphs.periodic_blocks``; 1/2 for
  each of two tied minimum images).
* Bands on the labels' k-mesh: the predicted H(k) with the labels' S(k) against the
  labels' own bands (which are the SCF's on its mesh): MAE over the valence bands and the
  ``conduction_bands`` lowest conduction bands (band indices ``< n_occ + conduction_bands``,
  ``n_occ = n_electrons / 2``; for metals these are band indices, not states below the
  Fermi level), over the valence bands alone, and the indirect-gap error (insulators:
  labels with a gap).
* Bands off the mesh along the stored high-symmetry path (``path_kpts``, ``path_bands``:
  PySCF's ``mf.get_bands`` of the SCF, ``data_prep/label.py --band_path=N``), with the exact
  S(k) at those k from PySCF (``cell.pbc_intor("int1e_ovlp", kpts=...)`` on the cell built
  from the file's labelling settings): the same three errors. The path gap is over the path
  points.
* Two bounds for context, evaluated the same way (same S(k)): ``bound_labels_*``, the
  exact labels' H Bloch-summed at the path k (their interpolation error; on the mesh it is
  0), and ``bound_truncated_*``, the exact labels on the model's labelled edges only (what a
  perfect model with this cutoff reaches, :func:`label_predictor`), on the mesh and the
  path.

The prediction is a function of the graph (:data:`Predictor`), injected with
``evaluate_periodic(..., predict=...)``; the default is the model's
(:func:`model_predictor`).

Structures without path bands (or without a k-mesh, overlap blocks or electron count) get
the metrics they have, and a note in the output says which are missing and why.
:func:`evaluate_periodic` averages each metric over the structures that have it (gap errors
as mean absolute errors), prints a table in meV, writes ``periodic_eval_<split>.json`` and
band plots ``bands_<split>_<key>.png`` (:func:`band_plot`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Callable

import jax
import numpy as np

from helm_jax import orbitals, units
from helm_jax.data import batching, geometry, labelling_pbc
from helm_jax.data import periodic as periodic_lib
from helm_jax.data import graphs as graphs_lib
from helm_jax.data.graphs import GraphSpec, MolGraph
from helm_jax.data.records import PeriodicLabels, Record
from helm_jax.model import assemble, helm

MEV = units.HARTREE_MEV
#: Prediction function: a periodic graph -> physical irreps ``(node [n, D_node], edge [E,
#: D_edge])`` in the layouts of the graph's spec (:func:`model_predictor`,
#: :func:`label_predictor`).
Predictor = Callable[[MolGraph], tuple[np.ndarray, np.ndarray]]
#: The bounds reported next to the model, and the metric name prefix of each.
BOUNDS = {"truncated": "bound_truncated_", "labels": "bound_labels_"}
METRIC_DOC = {
    "h_mae": "H MAE over the labelled entries (on-site and labelled edges)",
    "h_mae_onsite": "H MAE over the on-site blocks",
    "h_mae_shell_<lo>-<hi>A": "H MAE over labelled edges with length in [lo, hi) A",
    "mesh_band_mae": "band MAE on the labels' k-mesh, valence + conduction_bands bands",
    "mesh_valence_mae": "band MAE on the mesh, valence bands",
    "mesh_gap_err": "indirect gap error on the mesh (insulators; summary: mean |err|)",
    "path_band_mae": "band MAE along the stored path vs PySCF get_bands, exact S(k)",
    "path_valence_mae": "path band MAE, valence bands",
    "path_gap_err": "indirect gap error over the path points (insulators)",
    "bound_truncated_*": "the same metric for the exact labels on the model's edges only",
    "bound_labels_*": "the same metric for all exact labels (interpolation error)",
}


# ------------------------------------------------------------------ predictions


@functools.partial(jax.jit, static_argnames=("model", "num_graphs"))
def _apply(model: helm.HELM, params, inputs: dict, num_graphs: int):
    """Hamiltonian outputs of one padded batch (energy head skipped)."""
    return model.apply({"params": params}, **inputs, num_graphs=num_graphs, energy=False)


def model_predictor(model: helm.HELM, params, spec: GraphSpec, stats,
                    dtype=np.float32) -> Predictor:
    """The :data:`Predictor` of a model: one jitted call per structure (one compilation
    per distinct ``(n_atoms, n_edges)``).

    Args:
      model: the HELM model (:func:`helm_jax.model.helm.build_model`), restricted
        (``node_h``, ``edge_h``).
      params: its parameters.
      spec: the graphs' spec (node and edge irreps layouts).
      stats: training statistics (node de-standardisation), or None (unit scales).
      dtype: the model's compute dtype (positions and shifts are cast to it).
    """
    node_layout = spec.node_layout

    def predict(graph: MolGraph) -> tuple[np.ndarray, np.ndarray]:
        budget = batching.Budget(n_node=graph.n_node + 1, n_edge=graph.n_edge, n_graph=2)
        batch = batching.pad_batch([graph], budget, None, None, dtype=dtype, periodic=True)
        inputs = helm.batch_inputs(batch)
        num_graphs = inputs.pop("num_graphs")
        out = jax.device_get(_apply(model, params, inputs, num_graphs))
        node_h = np.asarray(out["node_h"], np.float64)[:graph.n_node]
        edge_h = np.asarray(out["edge_h"], np.float64)[:graph.n_edge]
        return (assemble.node_irreps_to_physical(node_h, graph.species, node_layout, stats),
                edge_h)

    return predict


def label_predictor(graph: MolGraph) -> tuple[np.ndarray, np.ndarray]:
    """The perfect model with the graph's cutoff: the graph's own label irreps (exact
    labels on the labelled edges, zero on the others)."""
    if graph.node_labels is None or graph.edge_labels is None:
        raise ValueError(f"graph {graph.key!r} has no labels: build it with with_labels=True")
    return graph.node_labels, graph.edge_labels


def hermitian_blocks(graph: MolGraph, node_irreps: np.ndarray, edge_irreps: np.ndarray,
                     spec: GraphSpec) -> PeriodicLabels:
    """Physical irreps of a periodic graph -> Hermitised pair blocks (module docstring).

    Args:
      graph: the periodic graph (``senders``, ``receivers``, ``translations``).
      node_irreps: ``[n, D_node]`` physical node irreps (``spec.node_layout``).
      edge_irreps: ``[E, D_edge]`` edge irreps (``spec.edge_layout``).
      spec: the graphs' spec.

    Returns:
      :class:`PeriodicLabels` with ``fock_blocks`` only: on-site pairs ``(i, i, 0)`` and one
      pair per edge, lexicographic ``(i, j, T)`` order, weight 1, PySCF AO order.

    Raises:
      ValueError: a non-periodic graph, or an edge whose reverse ``(j, i, -T)`` is missing.
    """
    if not graph.is_periodic:
        raise ValueError(f"graph {graph.key!r} is not periodic")
    template = spec.template
    maps = [template.ao_map(int(z)) for z in graph.species]
    n_ao = np.array([len(m) for m in maps], np.int32)
    nodes = spec.node_layout.irreps_to_blocks(np.asarray(node_irreps, np.float64))
    edges = spec.edge_layout.irreps_to_blocks(np.asarray(edge_irreps, np.float64))
    s, r = graph.senders.astype(np.int64), graph.receivers.astype(np.int64)
    t = graph.translations.astype(np.int64)
    where = {(int(a), int(b), *map(int, tt)): e for e, (a, b, tt) in enumerate(zip(s, r, t))}
    blocks = []
    for e, (a, b, tt) in enumerate(zip(s, r, t)):
        rev = where.get((int(b), int(a), *map(int, -tt)))
        if rev is None:
            raise ValueError(f"graph {graph.key!r}: edge ({a}, {b}, T={tt.tolist()}) has no "
                             f"reverse edge ({b}, {a}, T={(-tt).tolist()}); an image-pair "
                             "graph (periodic.image_pairs) always has it")
        blk = 0.5 * (edges[e] + edges[rev].T)
        blocks.append(blk[np.ix_(maps[a], maps[b])])
    onsite = [(0.5 * (nodes[a] + nodes[a].T))[np.ix_(maps[a], maps[a])]
              for a in range(graph.n_node)]
    atoms = np.arange(graph.n_node)
    _, pairs, trans, (flat,), offsets = periodic_lib.pack_pairs(
        np.concatenate([atoms, s]), np.concatenate([atoms, r]),
        np.concatenate([np.zeros((graph.n_node, 3), np.int64), t]), onsite + blocks,
        n_ao_per_atom=n_ao)
    n_pairs = len(pairs)
    return PeriodicLabels(pairs=pairs, translations=trans, fock_blocks=flat,
                          overlap_blocks=None, block_offsets=offsets, n_ao_per_atom=n_ao,
                          weight=np.ones(n_pairs), alias_distance=np.full(n_pairs, np.inf))


def predicted_blocks(model: helm.HELM, params, graph: MolGraph, spec: GraphSpec, stats,
                     dtype=np.float32) -> PeriodicLabels:
    """The model's Hermitised pair blocks of one periodic graph (:func:`hermitian_blocks`
    of :func:`model_predictor`)."""
    return hermitian_blocks(graph, *model_predictor(model, params, spec, stats, dtype)(graph),
                            spec)


# ------------------------------------------------------------------ metrics


def real_space_errors(graph: MolGraph, pred: PeriodicLabels, labels: PeriodicLabels,
                      shell_width: float = 1.0) -> dict[str, float]:
    """H MAE (Eh) over the labelled entries: ``h_mae``, ``h_mae_onsite`` and
    ``h_mae_shell_<lo>-<hi>A`` per distance bin of ``shell_width`` Angstrom.

    Args:
      graph: the periodic graph (edges and their label mask).
      pred: predicted pair blocks (:func:`hermitian_blocks`).
      labels: the stored labels; edge targets are weighted (module docstring).
      shell_width: bin width in Angstrom.

    Raises:
      ValueError: predicted and stored blocks of different shapes (another basis).
    """
    if not np.array_equal(pred.n_ao_per_atom, labels.n_ao_per_atom):
        raise ValueError(f"{graph.key!r}: predicted AOs per atom {pred.n_ao_per_atom.tolist()}"
                         f" differ from the labels' {labels.n_ao_per_atom.tolist()}")
    lab, prd = labels.pair_index(), pred.pair_index()
    sums: dict[str, list[float]] = {}

    def add(name, key):
        p, q = lab[key], prd[key]
        err = np.abs(pred.block(q) - labels.weight[p] * labels.block(p))
        for k in ("h_mae", name):
            acc = sums.setdefault(k, [0.0, 0])
            acc[0] += float(err.sum())
            acc[1] += err.size

    for i in range(graph.n_node):
        add("h_mae_onsite", (i, i, 0, 0, 0))
    vec = (graph.positions[graph.receivers] + graph.shifts - graph.positions[graph.senders])
    dist = np.linalg.norm(vec, axis=1)
    for e in np.flatnonzero(graph.labelled_edges()):
        lo = np.floor(dist[e] / shell_width) * shell_width
        add(f"h_mae_shell_{lo:g}-{lo + shell_width:g}A",
            (int(graph.senders[e]), int(graph.receivers[e]), *map(int, graph.translations[e])))
    return {k: s / n for k, (s, n) in sorted(sums.items(), key=_shell_order)}


def _shell_order(item) -> tuple:
    """Sort key: h_mae, h_mae_onsite, then shells by distance."""
    m = re.match(r"h_mae_shell_([0-9.]+)-", item[0])
    return (2, float(m.group(1))) if m else (0 if item[0] == "h_mae" else 1, 0.0)


def band_energies(pred: PeriodicLabels, kpts: np.ndarray, s_k: np.ndarray) -> np.ndarray:
    """Bands ``[K, nao]`` (Eh, ascending, NaN for dropped overlap directions) of the Bloch sum
    of ``pred``'s H blocks at ``kpts`` (fractional) with overlap ``s_k`` ``[K, nao, nao]``."""
    return periodic_lib.bands(periodic_lib.labels_to_k(pred, kpts, "fock"), s_k,
                              orbitals.S_THRESHOLD)


def band_errors(pred: np.ndarray, ref: np.ndarray, n_occ: int, conduction_bands: int,
                insulator: bool) -> dict[str, float]:
    """Band MAE (Eh) over bands ``< n_occ + conduction_bands`` (``band_mae``), over the
    valence bands (``valence_mae``) and, for insulators, the signed indirect-gap error
    ``gap_err`` (predicted minus reference).

    Args:
      pred, ref: ``[K, nao]`` ascending bands (NaN-padded at the end).
      n_occ: occupied bands (two electrons each).
      conduction_bands: conduction bands compared above the valence bands.
      insulator: whether to report the gap error.
    """
    available = int(min(np.isfinite(pred).sum(1).min(), np.isfinite(ref).sum(1).min()))
    count = min(n_occ + int(conduction_bands), available)
    err = np.abs(pred[:, :count] - ref[:, :count])
    out = {"band_mae": float(err.mean()), "valence_mae": float(err[:, :n_occ].mean())}
    if insulator and 0 < n_occ < available:
        out["gap_err"] = float(indirect_gap(pred, n_occ) - indirect_gap(ref, n_occ))
    return out


def indirect_gap(bands: np.ndarray, n_occ: int) -> float:
    """``min_k e[k, n_occ] - max_k e[k, n_occ - 1]`` (Eh) of bands ``[K, nao]``."""
    return float(np.min(bands[:, n_occ]) - np.max(bands[:, n_occ - 1]))


def settings_from_attrs(attrs) -> labelling_pbc.PeriodicSettings:
    """The labelling settings of a periodic HDF5 file from its attrs
    (``readers.open_dataset(path, periodic=True).attrs``)."""
    fields = {f.name for f in dataclasses.fields(labelling_pbc.PeriodicSettings)}
    kw = {}
    for name in fields & set(attrs):
        value = attrs[name]
        value = value.decode() if isinstance(value, bytes) else value
        if name == "kmesh":
            value = tuple(int(v) for v in str(value).split(","))
        elif isinstance(value, np.generic):
            value = value.item()
        kw[name] = value
    return labelling_pbc.PeriodicSettings(**kw)


def path_overlap(record: Record, settings: labelling_pbc.PeriodicSettings,
                 kpts: np.ndarray) -> np.ndarray:
    """Exact S(k) ``[K, nao, nao]`` (complex) at fractional ``kpts`` from PySCF, on the cell
    of ``record`` built with the labels' basis and pseudopotential."""
    structure = geometry.Structure(elements=np.asarray(record.elements, np.int32),
                                   coords=np.asarray(record.coords, np.float64),
                                   charge=int(record.charge), spin=int(record.spin),
                                   source=record.key, cell=record.cell, pbc=record.pbc)
    cell = labelling_pbc.build_cell(structure, settings)
    s_k = cell.pbc_intor("int1e_ovlp", hermi=1, kpts=cell.get_abs_kpts(np.asarray(kpts)))
    return np.asarray(s_k).reshape(len(kpts), cell.nao_nr(), cell.nao_nr())


@dataclasses.dataclass
class StructureResult:
    """One structure's metrics and the band arrays behind them.

    Attributes:
      key: the record's key.
      metrics: metric name -> value (Eh; :data:`METRIC_DOC`; bounds prefixed by
        :data:`BOUNDS`), plus counts (``n_edges``, ``n_labelled_edges``,
        ``n_label_pairs_beyond_cutoff``).
      notes: what was not evaluated and why.
      n_occ: occupied bands, or None (no electron count).
      insulator: whether the labels have a gap.
      fermi: the labels' Fermi level (Eh), or None.
      mesh_bands: ``{"kpts", "reference", "model", "truncated"}`` arrays ``[K, ...]`` on
        the labels' mesh, or None.
      path_bands: ``{"kpts", "x", "reference", "model", "truncated", "labels"}`` along the
        path (``x`` the cumulative length in 1/Angstrom) plus ``"ticks"`` (index, name), or
        None.
    """

    key: str
    metrics: dict[str, float]
    notes: list[str]
    n_occ: int | None
    insulator: bool
    fermi: float | None
    mesh_bands: dict | None = None
    path_bands: dict | None = None


def evaluate_structure(record: Record, graph: MolGraph, spec: GraphSpec, predict: Predictor,
                       settings: labelling_pbc.PeriodicSettings | None = None,
                       conduction_bands: int = 2, shell_width: float = 1.0) -> StructureResult:
    """All metrics of one periodic structure (module docstring).

    Args:
      record: the labelled record (``record.periodic``).
      graph: its graph (with labels: the truncation bound).
      spec: the graphs' spec.
      predict: the :data:`Predictor` (e.g. :func:`model_predictor`).
      settings: the labelling settings (basis and pseudopotential of the path overlap);
        None: no path metrics (noted).
      conduction_bands: conduction bands in the band MAE.
      shell_width: neighbour-shell bin width (Angstrom).

    Raises:
      ValueError: a record without periodic labels.
    """
    labels = record.periodic
    if labels is None:
        raise ValueError(f"record {record.key!r} has no periodic labels")
    pred = hermitian_blocks(graph, *predict(graph), spec)
    truncated = hermitian_blocks(graph, *label_predictor(graph), spec)
    metrics = real_space_errors(graph, pred, labels, shell_width)
    covered = {(int(a), int(b), *map(int, t)) for a, b, t in zip(
        graph.senders, graph.receivers, graph.translations)}
    beyond = sum(1 for key in labels.pair_index() if key not in covered
                 and not (key[0] == key[1] and not any(key[2:])))
    metrics.update(n_edges=graph.n_edge, n_labelled_edges=int(graph.labelled_edges().sum()),
                   n_label_pairs_beyond_cutoff=beyond)
    insulator = labels.gap is not None
    n_occ = None if labels.n_electrons is None else int(labels.n_electrons) // 2
    result = StructureResult(key=record.key, metrics=metrics, notes=[], n_occ=n_occ,
                             insulator=insulator, fermi=labels.fermi)
    missing = [why for cond, why in ((labels.n_electrons is None, "no electron count"),
                                     (labels.overlap_blocks is None, "no overlap blocks"))
               if cond]
    if missing:
        result.notes.append(f"no band metrics: {', '.join(missing)} in the labels")
        return result

    def compare(where, kpts, s_k, ref, sources):
        arrays = {"kpts": kpts, "reference": ref}
        for name, blocks in sources.items():
            arrays[name] = band_energies(blocks, kpts, s_k)
            prefix = "" if name == "model" else BOUNDS[name]
            for k, v in band_errors(arrays[name], ref, n_occ, conduction_bands,
                                    insulator).items():
                metrics[f"{prefix}{where}_{k}"] = v
        return arrays

    if labels.kmesh is None:
        result.notes.append("no mesh band metrics: the labels have no k-mesh (a real-space "
                            "source)")
    else:
        kpts = periodic_lib.mp_kpts(labels.kmesh)
        s_k = periodic_lib.labels_to_k(labels, kpts, "overlap")
        ref = band_energies(labels, kpts, s_k)
        result.mesh_bands = compare("mesh", kpts, s_k, ref,
                                    {"model": pred, "truncated": truncated})
    if labels.path_kpts is None or labels.path_bands is None:
        result.notes.append("no path metrics: no path_bands in the labels (label with "
                            "data_prep/label.py --band_path=N)")
    elif settings is None:
        result.notes.append("no path metrics: the labelling settings (basis, pseudo) for the "
                            "exact S(k) are unknown (the reader has no periodic file attrs)")
    else:
        kpts = np.asarray(labels.path_kpts, np.float64)
        s_k = path_overlap(record, settings, kpts)
        if s_k.shape[-1] != int(np.sum(labels.n_ao_per_atom)):
            raise ValueError(f"record {record.key!r}: PySCF's cell in basis "
                             f"{settings.basis!r} has {s_k.shape[-1]} AOs, the labels "
                             f"{int(np.sum(labels.n_ao_per_atom))}: wrong settings")
        arrays = compare("path", kpts, s_k, np.asarray(labels.path_bands, np.float64),
                         {"model": pred, "truncated": truncated, "labels": labels})
        result.path_bands = {**arrays, **_path_axis(record, kpts)}
    return result


def _path_axis(record: Record, kpts: np.ndarray) -> dict:
    """``{"x", "ticks"}`` of stored path k-points: those of ``high_symmetry_path`` when it
    gives the same points for the cell, else the cumulative Cartesian length and no ticks."""
    try:
        path_k, x, ticks = periodic_lib.high_symmetry_path(record.cell, record.pbc, len(kpts))
        if np.allclose(path_k, kpts, atol=1e-9):
            return {"x": x, "ticks": ticks}
    except ValueError:  # a lattice without a known path
        pass
    recip = 2 * np.pi * np.linalg.inv(periodic_lib.completed_cell(record.cell, record.pbc)).T
    steps = np.linalg.norm(np.diff(kpts, axis=0) @ recip, axis=1)
    return {"x": np.concatenate([[0.0], np.cumsum(steps)]), "ticks": []}


# ------------------------------------------------------------------ plot


def band_plot(path: str, x: np.ndarray, reference: np.ndarray, predicted: np.ndarray,
              ticks, zero: float, n_bands: int | None = None, title: str = "",
              zero_label: str = "VBM") -> str:
    """PNG of predicted bands (dashed) over reference bands (solid) along a k-path.

    Args:
      path: output file.
      x: ``[K]`` path coordinate (1/Angstrom).
      reference, predicted: ``[K, nao]`` bands (Eh).
      ticks: ``[(index, name)]`` special points ("G" is drawn as Gamma).
      zero: energy drawn at 0 (Eh): the reference valence-band maximum, or the Fermi level
        for metals.
      n_bands: lowest bands drawn (None: all).
      title: figure title.
      zero_label: what the zero is, for the axis label.

    Returns:
      ``path``.
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    n = reference.shape[1] if n_bands is None else min(int(n_bands), reference.shape[1])
    fig = Figure(figsize=(4.5, 4.0))
    ax = fig.add_subplot()
    to_ev = lambda e: (np.asarray(e)[:, :n] - zero) * units.HARTREE_EV
    ax.plot(x, to_ev(reference), color="k", lw=1.2)
    ax.plot(x, to_ev(predicted), color="tab:red", lw=1.2, ls="--")
    ax.plot([], [], color="k", lw=1.2, label="reference (PySCF)")
    ax.plot([], [], color="tab:red", lw=1.2, ls="--", label="predicted")
    for i, _ in ticks:
        ax.axvline(x[i], color="0.7", lw=0.6)
    ax.axhline(0.0, color="0.7", lw=0.6, ls=":")
    ax.set_xticks([x[i] for i, _ in ticks], ["$\\Gamma$" if s == "G" else s for _, s in ticks])
    ax.set_xlim(x[0], x[-1])
    ax.set_ylabel(f"E - E({zero_label}) (eV)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plot_structure(res: StructureResult, path: str, n_bands: int, title: str) -> str:
    pb = res.path_bands
    if res.insulator and res.n_occ:
        zero, label = float(np.max(pb["reference"][:, res.n_occ - 1])), "VBM"
    else:
        zero, label = (0.0, "0") if res.fermi is None else (float(res.fermi), "Fermi")
    return band_plot(path, pb["x"], pb["reference"], pb["model"], pb["ticks"], zero,
                     n_bands, title, label)


# ------------------------------------------------------------------ split evaluation


def summarize(results: list[StructureResult]) -> dict[str, float]:
    """Mean of each metric over the structures that have it (gap errors: mean absolute
    error, renamed ``*_gap_mae``; counts ``n_*`` summed), with ``n_structures`` and the
    numbers of structures with mesh (``n_mesh``) and path (``n_path``) metrics."""
    keys = sorted({k for r in results for k in r.metrics}, key=lambda k: (
        k.startswith("bound_"), k))
    out: dict[str, float] = {"n_structures": len(results),
                             "n_mesh": sum(r.mesh_bands is not None for r in results),
                             "n_path": sum(r.path_bands is not None for r in results)}
    for k in keys:
        values = [r.metrics[k] for r in results if k in r.metrics]
        if k.startswith("n_"):
            out[k] = float(np.sum(values))
        elif k.endswith("_gap_err"):
            out[k[:-len("_err")] + "_mae"] = float(np.mean(np.abs(values)))
        else:
            out[k] = float(np.mean(values))
    return out


def _in_mev(metrics: dict[str, float]) -> dict[str, float]:
    """Energy metrics in meV (``*_meV``; ``h_mae`` also in Eh as ``h_mae_eh``); counts as
    they are."""
    out = {}
    for k, v in metrics.items():
        if k.startswith("n_"):
            out[k] = int(v)
            continue
        out[f"{k}_meV"] = float(v) * MEV
        if k == "h_mae":
            out["h_mae_eh"] = float(v)
    return out


def format_table(summary: dict[str, float], split: str) -> str:
    """The summary as a text table in meV: rows per metric, columns model and bounds."""
    rows = [("H MAE, all labelled", "h_mae"), ("H MAE, on-site", "h_mae_onsite")]
    rows += [(f"H MAE, shell {k[len('h_mae_shell_'):]}", k) for k in summary
             if k.startswith("h_mae_shell_")]
    rows += [(f"{where} bands {what}", f"{where}_{key}") for where in ("mesh", "path")
             for what, key in (("val+cond MAE", "band_mae"), ("valence MAE", "valence_mae"),
                               ("gap |err|", "gap_mae"))]
    cols = [("model", ""), ("perfect@cutoff", BOUNDS["truncated"]),
            ("labels", BOUNDS["labels"])]
    lines = [f"periodic evaluation ({split}, {int(summary['n_structures'])} structures, "
             f"{int(summary['n_mesh'])} with mesh bands, {int(summary['n_path'])} with path "
             "bands), meV",
             f"{'':28s}" + "".join(f"{c:>16s}" for c, _ in cols)]
    for label, key in rows:
        if not any(p + key in summary for _, p in cols):
            continue
        cells = [f"{summary[p + key] * MEV:16.3f}" if p + key in summary else f"{'-':>16s}"
                 for _, p in cols]
        lines.append(f"{label:28s}" + "".join(cells))
    return "\n".join(lines)


def _file_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key) or "structure"


def evaluate_periodic(model, params, data, split: str = "test", workdir: str | None = None,
                      plot: bool = True, *, predict: Predictor | None = None,
                      dtype=np.float32, settings: labelling_pbc.PeriodicSettings | None = None,
                      conduction_bands: int | None = None, shell_width: float = 1.0,
                      max_plots: int = 4, verbose: bool = True) -> dict:
    """Evaluates a model on the periodic structures of a split (module docstring).

    Args:
      model, params: the HELM model and its parameters (ignored with ``predict``).
      data: :class:`helm_jax.data.datasets.Data` of a periodic dataset (``data.spec.
        periodic``); its graphs must carry labels.
      split: the split to evaluate (``data.splits[split]``).
      workdir: where ``periodic_eval_<split>.json`` and ``bands_<split>_<key>.png`` go
        (None: nothing written).
      plot: write band plots (structures with path bands: all if at most ``max_plots``,
        else the first).
      predict: a :data:`Predictor` used instead of the model (e.g. :func:`label_predictor`).
      dtype: the model's compute dtype.
      settings: labelling settings for the exact path S(k) (None: from ``data.reader.attrs``
        of a periodic HDF5 file; without them no path metrics, noted).
      conduction_bands: conduction bands in the band MAE (None: ``data.spec.
        conduction_bands``).
      shell_width: neighbour-shell bin width (Angstrom).
      max_plots: plot every structure with path bands up to this many, else only the first.
      verbose: print the table and the notes.

    Returns:
      ``{"split", "summary", "structures", "notes", "plots", "metric_doc", "shell_width_A",
      "conduction_bands"}``: ``summary`` and each structure's ``metrics`` in meV
      (``*_meV``) plus counts, as written to the JSON file.

    Raises:
      ValueError: a non-periodic dataset or an unknown split.
    """
    if not data.spec.periodic:
        raise ValueError("evaluate_periodic needs a periodic dataset (config.data.periodic="
                         "True); use helm_jax.evaluate for molecules")
    if split not in data.splits:
        raise ValueError(f"split {split!r} not in the data's splits {sorted(data.splits)}")
    if predict is None:
        predict = model_predictor(model, params, data.spec, data.stats, dtype)
    if settings is None and getattr(data.reader, "attrs", None) is not None \
            and data.reader.attrs.get("periodic", False):
        settings = settings_from_attrs(data.reader.attrs)
    n_cond = data.spec.conduction_bands if conduction_bands is None else int(conduction_bands)
    ref = graphs_lib.fermi_referenced if data.spec.fermi_reference else (lambda r: r)
    results = [evaluate_structure(ref(data.reader[int(i)]), data.graphs[int(i)], data.spec,
                                  predict, settings, n_cond, shell_width)
               for i in data.splits[split]]
    notes = [f"{r.key}: {n}" for r in results for n in r.notes]
    summary = summarize(results) if results else {"n_structures": 0, "n_mesh": 0, "n_path": 0}
    plots = []
    with_path = [r for r in results if r.path_bands is not None]
    if plot and workdir and with_path:
        os.makedirs(workdir, exist_ok=True)
        for r in with_path if len(with_path) <= max_plots else with_path[:1]:
            n_bands = None if r.n_occ is None else r.n_occ + n_cond
            mae = r.metrics.get("path_band_mae", np.nan) * MEV
            plots.append(_plot_structure(
                r, os.path.join(workdir, f"bands_{split}_{_file_key(r.key)}.png"), n_bands,
                f"{r.key} ({split}): path band MAE {mae:.1f} meV"))
    report = {"split": split, "summary": _in_mev(summary),
              "structures": [{"key": r.key, "insulator": r.insulator,
                              **_in_mev(r.metrics), "notes": r.notes} for r in results],
              "notes": notes, "plots": plots, "metric_doc": METRIC_DOC,
              "shell_width_A": shell_width, "conduction_bands": n_cond}
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, f"periodic_eval_{split}.json"), "w") as f:
            json.dump(report, f, indent=1)
    if verbose and results:
        print(format_table(summary, split))
        for n in notes:
            print(f"  note: {n}")
    return report
