"""Per-atom l=0 embeddings of one or more checkpoints, projected to 2-D (the paper's
representation analysis).

    python experiments/embeddings.py --checkpoint=hamiltonian=/tmp/emb/ham \
        --checkpoint=direct=/tmp/emb/direct --data=embedded --out=docs/embeddings

For every checkpoint (``label=path``, or a bare path labelled by its directory name) the
backbone is run on every structure of ``--data`` (the energy-only path: node features
only), and the l=0 channels of each real atom's final node features ``[n_atoms, C]`` are
standardised and projected to 2-D with UMAP (``umap-learn``) or, when it is not importable
or there are fewer than ``MIN_UMAP_POINTS`` atoms, with PCA (numpy SVD). Each checkpoint is
projected on its own (two networks' embedding spaces are not comparable coordinate by
coordinate). Written to ``--out``:

* ``<label>.npz``: ``coords [n_atoms, 2]``, ``embeddings [n_atoms, C]``, ``species [n_atoms]``,
  ``structure [n_atoms]`` (index into the data), ``environment [n_atoms]`` (str) and
  ``projection`` (``"umap"`` or ``"pca"``);
* ``<label>.csv``: one row per atom (structure, atom, element, environment, x, y);
* ``<label>_element.png``, ``<label>_environment.png``: the projection coloured by element
  and by chemical environment;
* ``embeddings.png``: all checkpoints side by side (rows) coloured both ways (columns);
* ``summary.json``: per checkpoint the projection used, the number of atoms and a nearest-
  neighbour score of the raw embeddings (see :func:`environment_knn_accuracy`).

A chemical environment is the element and its bonded neighbours, e.g. ``C(H3O)`` for a
methanol carbon: atoms ``i, j`` are bonded when ``|r_ij| < BOND_SCALE (r_i + r_j)`` with
ASE's covalent radii.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BOND_SCALE = 1.2
MIN_UMAP_POINTS = 10
MAX_ENV_COLOURS = 14  # the most frequent environments get colours; the rest are "other"

FLAGS = flags.FLAGS


# -- structures ---------------------------------------------------------------------------

def load_structures(data: str, max_structures: int | None = None) -> list[Any]:
    """Structures to embed (ase.Atoms or Records, both accepted by the Predictor).

    Args:
      data: ``"embedded"``, an xyz / extended-xyz / ASE db file, or a dataset file that
        :func:`helm_jax.data.readers.open_dataset` opens (its labels are not read for use).
      max_structures: keep only the first N.
    """
    import ase.io
    from helm_jax.data import embedded, readers

    if data == "embedded":
        return ase.io.read(embedded.GEOMETRIES, index=":")[:max_structures]
    if data.endswith((".xyz", ".extxyz", ".db")):
        return ase.io.read(data, index=":")[:max_structures]
    reader = readers.open_dataset(data)
    n = len(reader) if max_structures is None else min(max_structures, len(reader))
    return [reader[i] for i in range(n)]


def _elements_coords(x) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(x, "numbers"):  # ase.Atoms
        return np.asarray(x.numbers), np.asarray(x.get_positions())
    return np.asarray(x.elements), np.asarray(x.coords)  # Record


def molecule_name(structure) -> str:
    """A structure's molecule: extended-xyz ``name`` if given, else its formula."""
    from helm_jax.data.readers import formula
    info = getattr(structure, "info", None) or {}
    return str(info.get("name") or formula(_elements_coords(structure)[0]))


def environments(elements: np.ndarray, coords: np.ndarray) -> list[str]:
    """Chemical-environment label of each atom: element and bonded neighbours.

    Args:
      elements: ``[n]`` atomic numbers.
      coords: ``[n, 3]`` Angstrom.

    Returns:
      ``n`` labels such as ``"C(H3O)"`` (neighbours in alphabetical order, counts > 1
      written after the symbol) or ``"Xe()"`` for an atom with no bonded neighbour.
    """
    from ase.data import chemical_symbols, covalent_radii

    radii = covalent_radii[elements]
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)  # [n, n]
    bonded = (dist < BOND_SCALE * (radii[:, None] + radii[None])) & ~np.eye(len(elements),
                                                                            dtype=bool)
    labels = []
    for i, z in enumerate(elements):
        counts = collections.Counter(chemical_symbols[elements[j]] for j in np.where(bonded[i])[0])
        neigh = "".join(s + (str(c) if c > 1 else "") for s, c in sorted(counts.items()))
        labels.append(f"{chemical_symbols[z]}({neigh})")
    return labels


# -- embeddings ---------------------------------------------------------------------------

def extract(checkpoint: str, structures: Sequence[Any], which: str = "best"
            ) -> dict[str, np.ndarray]:
    """l=0 node features of the checkpoint's backbone for every real atom.

    Args:
      checkpoint: workdir of ``experiments/run.py`` or a checkpoint directory.
      structures: ase.Atoms or Records in the checkpoint's elements.
      which: ``"best"`` or ``"latest"`` checkpoint of a workdir.

    Returns:
      ``embeddings [n_atoms, C]`` (float64), ``species [n_atoms]``, ``structure [n_atoms]``
      (index into ``structures``), with the atoms of structure 0 first, in input order.
    """
    import jax
    from helm_jax.data import batching
    from helm_jax.model import backbone as backbone_lib
    from helm_jax.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, which=which)
    backbone = backbone_lib.HELMBackbone.from_config(predictor.config.model)
    params = {"params": predictor.params["backbone"]}

    @jax.jit
    def node_scalars(params, species, positions, senders, receivers):  # -> [N, C]
        nodes, _ = backbone.apply(params, species, positions, senders, receivers,
                                  batching.node_mask(species),
                                  batching.edge_mask(species, senders, receivers),
                                  compute_edges=False)  # [N, (l_max+1)^2, C]
        return nodes[:, 0, :]

    graphs = predictor.graphs([predictor_record(predictor, s) for s in structures])
    per_structure: list[np.ndarray | None] = [None] * len(graphs)
    for idx, batch in predictor.batches(graphs):
        h = np.asarray(jax.device_get(node_scalars(
            params, batch.nodes["species"], batch.nodes["positions"], batch.senders,
            batch.receivers)), np.float64)
        start = 0
        for i in idx:  # molecules are packed in order, padding after them
            n = graphs[i].n_node
            per_structure[i] = h[start:start + n]
            start += n
    species = np.concatenate([np.asarray(g.species) for g in graphs])
    structure = np.concatenate([np.full(g.n_node, i) for i, g in enumerate(graphs)])
    return {"embeddings": np.concatenate(per_structure), "species": species,
            "structure": structure}


def predictor_record(predictor, structure):
    """The Predictor's Record of an ase.Atoms or Record (elements checked)."""
    from helm_jax.predict import to_record
    return to_record(structure, predictor.template)


# -- projection ---------------------------------------------------------------------------

def standardize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per channel (constant channels stay zero). ``[n, C]``."""
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def pca(x: np.ndarray, dims: int = 2) -> np.ndarray:
    """Projection of ``x [n, C]`` on its first ``dims`` principal axes (numpy SVD).

    Returns ``[n, dims]`` (zero-padded columns if ``x`` has rank < dims).
    """
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    out = u[:, :dims] * s[:dims]
    if out.shape[1] < dims:
        out = np.pad(out, ((0, 0), (0, dims - out.shape[1])))
    return out


def project(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D projection of ``x [n, C]``.

    Args:
      x: points (standardised by the caller).
      method: ``"umap"``, ``"pca"``, or ``"auto"`` (UMAP when ``umap-learn`` imports and
        ``n >= MIN_UMAP_POINTS``, else PCA).
      seed: UMAP's random state.

    Returns:
      ``(coords [n, 2], method used)``.
    """
    if method in ("auto", "umap") and len(x) >= MIN_UMAP_POINTS:
        try:
            import warnings
            import umap
        except ImportError:
            if method == "umap":
                raise
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "n_jobs overridden by random_state"
                reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1),
                                    min_dist=0.1, random_state=seed)
                return np.asarray(reducer.fit_transform(x), np.float64), "umap"
    elif method == "umap":
        raise ValueError(f"UMAP needs at least {MIN_UMAP_POINTS} points, got {len(x)}.")
    return pca(x), "pca"


def environment_knn_accuracy(x: np.ndarray, env: Sequence[str], structure: np.ndarray,
                             names: Sequence[str], k: int = 5) -> float:
    """How often an atom's environment is the majority of its k nearest other-molecule atoms.

    Nearest neighbours are taken in the standardised embedding space ``x [n, C]`` among atoms
    of *other* molecules (``names[structure]`` differs), so conformers of one molecule do not
    count; atoms whose environment occurs in no other molecule are left out.

    Returns:
      the fraction of scored atoms (0..1); NaN if no atom can be scored.
    """
    env = np.asarray(env)
    mol = np.asarray(names)[structure]
    d = np.sum((x[:, None] - x[None]) ** 2, axis=-1)  # [n, n]
    hits, scored = 0, 0
    for i in range(len(x)):
        other = mol != mol[i]
        if not np.any(env[other] == env[i]):
            continue
        cand = np.where(other)[0]
        nearest = cand[np.argsort(d[i, cand])[:k]]
        vote = collections.Counter(env[nearest]).most_common(1)[0][0]
        hits += int(vote == env[i])
        scored += 1
    return hits / scored if scored else float("nan")


# -- plots --------------------------------------------------------------------------------

def _colours(labels: Sequence[str], top: int | None) -> tuple[list[str], dict[str, Any]]:
    import matplotlib
    counts = collections.Counter(labels)
    keep = [l for l, _ in counts.most_common(top)]
    shown = [l if l in keep else "other" for l in labels]
    cmap = matplotlib.colormaps["tab20"] if len(keep) <= 20 else matplotlib.colormaps["turbo"]
    colours = {l: cmap(i % 20 if len(keep) <= 20 else i / max(len(keep) - 1, 1))
               for i, l in enumerate(keep)}
    colours["other"] = (0.75, 0.75, 0.75, 1.0)
    return shown, colours


def _scatter(ax, coords: np.ndarray, labels: Sequence[str], title: str,
             top: int | None, legend_cols: int) -> None:
    shown, colours = _colours(labels, top)
    shown = np.asarray(shown)
    order = [l for l in colours if l in set(shown)]
    for l in order:
        m = shown == l
        ax.scatter(coords[m, 0], coords[m, 1], s=9, color=colours[l], label=f"{l} ({m.sum()})",
                   linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=1.5, ncol=legend_cols, loc="center left",
              bbox_to_anchor=(1.0, 0.5), frameon=False, handletextpad=0.1, columnspacing=0.5)


def element_labels(species: np.ndarray) -> list[str]:
    """Chemical symbols of ``species [n]``."""
    from ase.data import chemical_symbols
    return [chemical_symbols[z] for z in species]


def plot_one(path: str, coords: np.ndarray, labels: Sequence[str], title: str,
             top: int | None, legend_cols: int) -> None:
    """One projection coloured by ``labels``, saved as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no backend switch in notebooks
    fig = Figure(figsize=(7, 5))
    _scatter(fig.subplots(), coords, labels, title, top, legend_cols)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_grid(path: str, results: dict[str, dict]) -> None:
    """All checkpoints (rows) coloured by element and environment (columns)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(14, 4.6 * len(results)))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for row, (label, r) in enumerate(results.items()):
        how = r["projection"].upper()
        _scatter(axes[row, 0], r["coords"], element_labels(r["species"]),
                 f"{label}: l=0 atom embeddings ({how}), by element", None, 2)
        _scatter(axes[row, 1], r["coords"], r["environment"],
                 f"{label}: by chemical environment (top {MAX_ENV_COLOURS})",
                 MAX_ENV_COLOURS, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# -- driver -------------------------------------------------------------------------------

def parse_checkpoints(specs: Sequence[str]) -> dict[str, str]:
    """``["label=path", "path"]`` -> ``{label: path}`` (a bare path: its directory name)."""
    out = {}
    for spec in specs:
        label, path = spec.split("=", 1) if "=" in spec else (
            os.path.basename(os.path.normpath(spec)), spec)
        if label in out:
            raise ValueError(f"Two checkpoints are labelled {label!r}: name them label=path.")
        out[label] = path
    return out


def run(checkpoints: dict[str, str], data: str | None, out: str, projection: str = "auto",
        which: str = "best", max_structures: int | None = None, seed: int = 0
        ) -> dict[str, dict]:
    """Embeds, projects, plots and writes everything for each checkpoint.

    Args:
      checkpoints: ``{label: workdir or checkpoint dir}``.
      data: structures (see :func:`load_structures`); None: the first checkpoint's
        ``config.data.path``.
      out: output directory (created).
      projection: ``"auto"``, ``"umap"`` or ``"pca"``.
      which: ``"best"`` or ``"latest"``.
      max_structures: embed only the first N structures.
      seed: UMAP seed.

    Returns:
      ``{label: {"coords" [n_atoms, 2], "embeddings" [n_atoms, C], "species", "structure",
      "environment", "projection", "knn_environment_accuracy"}}``.
    """
    from helm_jax import checkpoint as ckpt_lib

    if data is None:
        first = next(iter(checkpoints.values()))
        data = ckpt_lib.load_model(first, which=which).config.data.path
    structures = load_structures(data, max_structures)
    env = [e for s in structures for e in environments(*_elements_coords(s))]
    names = [molecule_name(s) for s in structures]
    os.makedirs(out, exist_ok=True)
    results, summary = {}, {"data": data, "n_structures": len(structures), "checkpoints": {}}
    for label, path in checkpoints.items():
        r = extract(path, structures, which=which)
        x = standardize(r["embeddings"])
        coords, used = project(x, projection, seed)
        r.update(coords=coords, projection=used, environment=env,
                 knn_environment_accuracy=environment_knn_accuracy(x, env, r["structure"],
                                                                    names))
        results[label] = r
        np.savez(os.path.join(out, f"{label}.npz"), coords=coords, embeddings=r["embeddings"],
                 species=r["species"], structure=r["structure"], environment=np.asarray(env),
                 projection=used)
        with open(os.path.join(out, f"{label}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["structure", "atom", "element", "environment", "x", "y"])
            atom = np.concatenate([np.arange(np.sum(r["structure"] == i))
                                   for i in range(len(structures))])
            for row in zip(r["structure"], atom, element_labels(r["species"]), env,
                           coords[:, 0], coords[:, 1]):
                w.writerow([int(row[0]), int(row[1]), row[2], row[3], f"{row[4]:.6f}",
                            f"{row[5]:.6f}"])
        plot_one(os.path.join(out, f"{label}_element.png"), coords,
                 element_labels(r["species"]), f"{label} ({used.upper()}), by element", None, 2)
        plot_one(os.path.join(out, f"{label}_environment.png"), coords, env,
                 f"{label} ({used.upper()}), by chemical environment", MAX_ENV_COLOURS, 1)
        summary["checkpoints"][label] = {
            "path": os.path.abspath(path), "projection": used, "n_atoms": int(len(coords)),
            "channels": int(r["embeddings"].shape[1]),
            "knn_environment_accuracy": r["knn_environment_accuracy"]}
        print(f"{label}: {len(coords)} atoms, {r['embeddings'].shape[1]} channels, "
              f"projection {used}, environment 5-NN accuracy (other molecules) "
              f"{r['knn_environment_accuracy']:.3f}", flush=True)
    plot_grid(os.path.join(out, "embeddings.png"), results)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return results


def main(argv):
    """Embeds ``--data`` with each ``--checkpoint``; writes projections and plots to ``--out``."""
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    run(parse_checkpoints(FLAGS.checkpoint), FLAGS.data, FLAGS.out, FLAGS.projection,
        FLAGS.which, FLAGS.max_structures, FLAGS.seed)
    print(f"Wrote {FLAGS.out}/embeddings.png, per-checkpoint PNGs, .npz/.csv coordinates and "
          "summary.json.")


def define_flags() -> None:
    """The command line's flags (defined only when run as a script, so that importing this
    module next to another experiments/ script defines no duplicate flags)."""
    flags.DEFINE_multi_string("checkpoint", None, "label=path of a workdir or checkpoint dir "
                              "(repeat for several); a bare path uses its directory name.")
    flags.DEFINE_string("data", None, "Structures to embed: 'embedded' (the shipped "
                        "geometries), an xyz / extended-xyz / ASE db file, or any dataset file "
                        "helm_jax.data.readers opens (default: the first checkpoint's data).")
    flags.DEFINE_string("out", "embeddings", "Output directory.")
    flags.DEFINE_enum("projection", "auto", ["auto", "umap", "pca"],
                      "auto: UMAP when importable and there are enough atoms, else PCA.")
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a workdir.")
    flags.DEFINE_integer("max_structures", None, "Embed only the first N structures.")
    flags.DEFINE_integer("seed", 0, "Seed of the UMAP projection.")
    flags.mark_flags_as_required(["checkpoint"])


if __name__ == "__main__":
    define_flags()
    app.run(main)
