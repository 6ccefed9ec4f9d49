"""The rMD17 Hamiltonian-pretraining study: energy/force error against the number K of
energy labels, for direct, pretrained-frozen and finetuned training (issue: "Reproduce the
paper's central claim on real labels").

One command per molecule runs everything, resuming whatever an interrupted run finished:

    python data_prep/label.py --input=rmd17/ethanol_train_01.xyz \
        --out=data/ethanol_train_pbe_svp.h5 --xc=pbe --basis=def2-svp --limit=500
    python experiments/rmd17_study.py --molecule=ethanol --rmd17=/path/to/rmd17 \
        --workdir=workdirs/rmd17_study

Steps (settings in ``helm_jax.configs.md17.study_variant``: the same model and optimiser budget for every
protocol):

1. Hamiltonian pretraining on the labelled PBE/def2-SVP Fock matrices (``--labels``).
2. For each K, protocol and seed: an energy + force run on K conformers of
   ``<molecule>_train_01.xyz`` (rMD17's own ORCA energies and forces; the seed draws the
   K conformers and initialises the model), validation on max(5, K/10) others.
3. Each run's best checkpoint predicts the first ``--n_test`` conformers of
   ``<molecule>_test_01.xyz``; energy MAE (meV) and force MAE (meV/A, per component).
4. ``results.json``, ``results.md`` (mean +- standard deviation over seeds) and
   ``error_vs_k.png`` in ``<workdir>/<molecule>``.

A finished run leaves ``result.json`` in its folder and is skipped on the next invocation;
an interrupted one resumes from its checkpoint.

At convergence (docs/rmd17_convergence.md): ``--pretrained=<workdir>`` uses a finished
Hamiltonian run or an exported model such as ``checkpoints/rmd17_ethanol_pbe_svp`` (its
backbone, and its model settings for every protocol) instead of step 1;
``--steps_per_label=S --min_steps=M --early_stop=P`` gives each energy run a budget of
``max(M, S * K)`` steps that it leaves early when the validation loss has not improved for
``P`` evaluations; ``--control`` adds ``direct_matched``: direct training given the
pretraining's steps on top of its own budget, the compute the pretrained protocols had.
The summary adds the ratio direct / finetuned per K (mean +- std over seeds; a seed draws
the same K conformers in every protocol).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

FLAGS = flags.FLAGS
flags.DEFINE_enum("molecule", "ethanol", ["ethanol", "malonaldehyde", "uracil"], "Molecule.")
flags.DEFINE_string("rmd17", "../shared/data/rmd17", "Folder with <mol>_{train,test}_01.xyz.")
flags.DEFINE_string("labels", None, "Labelled Hamiltonians (default data/<mol>_train_pbe_svp.h5).")
flags.DEFINE_string("workdir", "workdirs/rmd17_study", "Output root (a folder per molecule).")
flags.DEFINE_list("ks", ["25", "50", "100", "200"], "Numbers of energy-labelled conformers.")
flags.DEFINE_list("protocols", ["direct", "frozen", "finetune"], "Transfer protocols.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (K-subset draw and model initialisation).")
flags.DEFINE_integer("n_test", 500, "Test conformers (the first ones of the test file).")
flags.DEFINE_integer("pretrain_steps", None, "Override the pretraining steps.")
flags.DEFINE_integer("energy_steps", None, "Override the energy runs' steps.")
flags.DEFINE_bool("small", False, "Tiny model and few steps (a quick end-to-end check).")
flags.DEFINE_string("pretrained", None, "A finished Hamiltonian run (workdir) or an exported "
                    "model to transfer from instead of the study's own pretraining.")
flags.DEFINE_integer("steps_per_label", 0, "Energy budget max(min_steps, this x K); 0: "
                     "the study's fixed budget (or --energy_steps).")
flags.DEFINE_integer("min_steps", 1000, "Smallest energy budget with --steps_per_label.")
flags.DEFINE_integer("early_stop", 0, "Stop an energy run after this many evaluations "
                     "without a better validation loss (0: never).")
flags.DEFINE_bool("control", False, "Add direct_matched: direct training with the "
                  "pretraining's steps added to its budget.")

MEV = 1e3


def pretrain_config(molecule: str, labels: str, small: bool, steps: int | None):
    """Hamiltonian pretraining config of the study."""
    from helm_jax.configs import md17
    c = md17.get_config(f"{molecule},study" + (",small" if small else ""))
    c.data.path = labels
    if small:
        c.model.num_layers = 1
        c.data.split.update(train=0.75, val=0.25, test=0)
    if steps:
        c.train.num_steps = steps
    return c


def energy_config(molecule: str, protocol: str, k: int, seed: int, train_xyz: str,
                  pretrained: str, small: bool, steps: int | None, model=None,
                  early_stop: int = 0):
    """Energy + force config of one (protocol, K, seed) run; ``model``: the pretrained
    run's ``config.model`` (every protocol then uses its architecture); ``direct_matched``
    is the direct protocol under its own name."""
    from helm_jax.configs import md17
    base_protocol = "direct" if protocol == "direct_matched" else protocol
    c = md17.get_config(f"{molecule},energy,{base_protocol},k={k},study" + (
        ",small" if small else ""))
    if model is not None:
        c.model = model
    c.train.early_stop_patience = int(early_stop)
    c.data.path = train_xyz
    c.data.split.update(train=k, val=max(5, k // 10), test=0)
    c.seed = c.data.split_seed = seed
    if small:
        c.model.num_layers = 1
    if base_protocol != "direct":
        c.transfer.init_from = pretrained
    if steps:
        c.train.num_steps = steps
    return c


def test_errors(run_dir: str, test_xyz: str, n_test: int) -> dict[str, float]:
    """Energy MAE (meV) and force MAE (meV/A) of a run's best checkpoint on the test file."""
    import numpy as np

    from helm_jax import units
    from helm_jax.data import readers
    from helm_jax.predict import Predictor
    reader = readers.open_dataset(test_xyz)
    n = min(n_test, len(reader))
    if n < n_test:
        raise ValueError(f"{test_xyz} has {len(reader)} conformers; --n_test={n_test} asks for "
                         "more. Lower --n_test.")
    records = [reader[i] for i in range(n)]
    predictor = Predictor.from_checkpoint(run_dir, which="best", max_molecules=64)
    energy, forces = predictor.energy_and_forces(records)
    ev = units.HARTREE_EV
    e_err = np.abs(np.asarray(energy) - np.array([r.energy * ev for r in records]))
    f_err = np.concatenate([np.abs(f - r.forces * ev).ravel() for f, r in zip(forces, records)])
    return {"energy_mae_mev": float(e_err.mean() * MEV),
            "forces_mae_mev_a": float(f_err.mean() * MEV), "n_test": n}


def run_once(config, run_dir: str, test_xyz: str, n_test: int) -> dict:
    """Trains (or resumes) one run and evaluates it; cached in ``result.json``."""
    from helm_jax import train
    path = os.path.join(run_dir, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    t0 = time.time()
    out = train.train_and_evaluate(config, run_dir)
    if out.get("interrupted"):
        raise SystemExit(f"Interrupted; rerun the same command to resume ({run_dir}).")
    result = {"train_seconds": time.time() - t0, "steps": out["step"],
              **test_errors(run_dir, test_xyz, n_test)}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def energy_budget(k: int, steps_per_label: int, min_steps: int, fixed: int | None,
                  pretrain_steps: int, protocol: str) -> int | None:
    """Steps of one energy run: ``max(min_steps, steps_per_label * K)`` (or ``fixed``; None:
    the config's), plus the pretraining's steps for ``direct_matched``."""
    steps = max(min_steps, steps_per_label * k) if steps_per_label else fixed
    if protocol == "direct_matched":
        if steps is None:
            raise ValueError("direct_matched needs an explicit budget: pass --steps_per_label "
                             "or --energy_steps.")
        steps += pretrain_steps
    return steps


def ratios(rows: list[dict], over: str = "direct", under: str = "finetune") -> dict:
    """Per K: ``over`` / ``under`` test MAE of the same seed (same K conformers), mean and
    std over seeds, for energies and forces."""
    import numpy as np
    by = {(r["protocol"], r["k"], r["seed"]): r for r in rows}
    out = {}
    for k in sorted({r["k"] for r in rows}):
        pairs = [(by[(over, k, s)], by[(under, k, s)]) for (p, kk, s) in by
                 if p == over and kk == k and (under, k, s) in by]
        if not pairs:
            continue
        out[str(k)] = {}
        for key in ("energy_mae_mev", "forces_mae_mev_a"):
            r = np.array([a[key] / b[key] for a, b in pairs])
            out[str(k)][key] = {"mean": float(r.mean()), "std": float(r.std()),
                                "seeds": len(r)}
    return out


def summarize(rows: list[dict]) -> dict:
    """Mean and standard deviation over seeds per (protocol, K)."""
    import numpy as np
    out: dict = {}
    for r in rows:
        out.setdefault(r["protocol"], {}).setdefault(str(r["k"]), []).append(r)
    table = {}
    for protocol, by_k in out.items():
        table[protocol] = {}
        for k, rs in by_k.items():
            e = np.array([r["energy_mae_mev"] for r in rs])
            f = np.array([r["forces_mae_mev_a"] for r in rs])
            table[protocol][k] = {"energy_mean": float(e.mean()), "energy_std": float(e.std()),
                                  "forces_mean": float(f.mean()), "forces_std": float(f.std()),
                                  "seeds": len(rs)}
    return table


def markdown(table: dict, ks: list[int], molecule: str) -> str:
    """The study table: one row per protocol, energy / force MAE per K."""
    head = "| protocol | " + " | ".join(f"K={k}: E (meV) / F (meV/A)" for k in ks) + " |"
    lines = [f"rMD17 {molecule}: test MAE, mean +- std over seeds", "", head,
             "|---" * (len(ks) + 1) + "|"]
    for protocol, by_k in table.items():
        cells = []
        for k in ks:
            m = by_k.get(str(k))
            cells.append("-" if m is None else
                         f"{m['energy_mean']:.1f} +- {m['energy_std']:.1f} / "
                         f"{m['forces_mean']:.1f} +- {m['forces_std']:.1f}")
        lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, ks: list[int], molecule: str, path: str) -> None:
    """Error versus K, one line per protocol, error bars over seeds."""
    from matplotlib.figure import Figure  # no pyplot: no backend switch in notebooks
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for protocol, by_k in table.items():
        kk = [k for k in ks if str(k) in by_k]
        for ax, key in zip(axes, ("energy", "forces")):
            ax.errorbar(kk, [by_k[str(k)][f"{key}_mean"] for k in kk],
                        yerr=[by_k[str(k)][f"{key}_std"] for k in kk], marker="o", capsize=3,
                        label=protocol)
    for ax, label in zip(axes, ("energy MAE (meV)", "force MAE (meV/A)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_formatter(NullFormatter())  # only the K ticks are labelled
        ax.yaxis.set_major_formatter(ScalarFormatter())  # plain numbers, not powers of ten
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("K energy-labelled conformers")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.suptitle(f"rMD17 {molecule}: Hamiltonian pretraining vs direct")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_study(molecule: str, rmd17: str, labels: str | None, workdir: str, ks: list[int],
              protocols: list[str], seeds: list[int], n_test: int, small: bool = False,
              pretrain_steps: int | None = None, energy_steps: int | None = None,
              pretrained: str | None = None, steps_per_label: int = 0, min_steps: int = 1000,
              early_stop: int = 0, control: bool = False) -> dict:
    """Runs (or resumes) the whole study for one molecule; returns the summary table."""
    train_xyz = os.path.join(rmd17, f"{molecule}_train_01.xyz")
    test_xyz = os.path.join(rmd17, f"{molecule}_test_01.xyz")
    needed = (train_xyz, test_xyz) + ((labels,) if pretrained is None else ())
    for path in needed:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist: pass --rmd17 (folder of rMD17 xyz files) and --labels "
                "(from data_prep/label.py, see this file's docstring).")
    root = os.path.join(workdir, molecule)
    os.makedirs(root, exist_ok=True)
    import jax
    if not jax.config.jax_compilation_cache_dir:
        # The 12 runs of a protocol compile the same programs: compile them once.
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    from helm_jax import checkpoint, train
    pre_dir = pretrained or os.path.join(root, "pretrain")
    done = os.path.join(root, "pretrain_result.json" if pretrained else "pretrain/result.json")
    model = None  # the study's own model settings, unless a finished run brings its own
    if pretrained:
        model = checkpoint.load_model(pretrained).config.model
        if not os.path.exists(done):
            # the steps it trained (its latest checkpoint), not its best one's
            step = checkpoint.trained_steps(pretrained)
            with open(done, "w") as f:
                json.dump({"step": int(step), "workdir": os.path.abspath(pretrained),
                           "model": model.to_dict()}, f, indent=1)
    elif not os.path.exists(done):
        out = train.train_and_evaluate(
            pretrain_config(molecule, labels, small, pretrain_steps), pre_dir)
        if out.get("interrupted"):
            raise SystemExit("Interrupted; rerun the same command to resume.")
        with open(done, "w") as f:
            json.dump({"step": out["step"], "val": out["val"], "seconds": out["seconds"]}, f,
                      indent=1)
    with open(done) as f:
        pre = json.load(f)
    rows = []
    for k in ks:
        for protocol in list(protocols) + (["direct_matched"] if control else []):
            for seed in seeds:
                run_dir = os.path.join(root, f"{protocol}_k{k}_seed{seed}")
                steps = energy_budget(k, steps_per_label, min_steps, energy_steps,
                                      int(pre["step"]), protocol)
                cfg = energy_config(molecule, protocol, k, seed, train_xyz, pre_dir, small,
                                    steps, model, early_stop)
                r = run_once(cfg, run_dir, test_xyz, n_test)
                rows.append({"protocol": protocol, "k": k, "seed": seed, **r})
                print(f"{molecule} {protocol} K={k} seed={seed}: E {r['energy_mae_mev']:.1f} "
                      f"meV, F {r['forces_mae_mev_a']:.1f} meV/A", flush=True)
    table = summarize(rows)
    ratio = ratios(rows)
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump({"molecule": molecule, "runs": rows, "summary": table,
                   "direct_over_finetune": ratio, "pretrain": pre}, f, indent=1)
    with open(os.path.join(root, "results.md"), "w") as f:
        f.write(markdown(table, ks, molecule) + ratio_markdown(ratio))
    plot(table, ks, molecule, os.path.join(root, "error_vs_k.png"))
    print(markdown(table, ks, molecule) + ratio_markdown(ratio))
    return table


def ratio_markdown(ratio: dict) -> str:
    """Rows of direct / finetuned test MAE per K ("" without both protocols)."""
    if not ratio:
        return ""
    lines = ["", "direct / finetuned test MAE (same seed and K conformers; mean +- std)", "",
             "| K | energy | forces |", "|---|---|---|"]
    for k, r in ratio.items():
        e, f = r["energy_mae_mev"], r["forces_mae_mev_a"]
        lines.append(f"| {k} | {e['mean']:.2f} +- {e['std']:.2f} | "
                     f"{f['mean']:.2f} +- {f['std']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    """Runs the study for --molecule (flags above)."""
    del argv
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    labels = FLAGS.labels or f"data/{FLAGS.molecule}_train_pbe_svp.h5"
    run_study(FLAGS.molecule, FLAGS.rmd17, labels, FLAGS.workdir,
              [int(k) for k in FLAGS.ks], FLAGS.protocols, [int(s) for s in FLAGS.seeds],
              FLAGS.n_test, FLAGS.small, FLAGS.pretrain_steps, FLAGS.energy_steps,
              FLAGS.pretrained, FLAGS.steps_per_label, FLAGS.min_steps, FLAGS.early_stop,
              FLAGS.control)


if __name__ == "__main__":
    app.run(main)
