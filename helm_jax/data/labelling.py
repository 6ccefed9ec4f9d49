"""Labels geometries with PySCF (restricted or unrestricted KS-DFT or HF) into helm_jax HDF5.

Library of the labelling command ``data_prep/label.py``:

    python data_prep/label.py --input=frames.xyz --out=labels.h5 --xc=pbe --basis=def2-svp \
        --grid_level=5 --conv_tol=1e-11 --forces --workers=2

Per structure it stores the Fock matrix F = h_core + V_eff[D] of the converged density D
(`mf.get_fock(dm=mf.make_rdm1())`: no DIIS, damping or level shift), the AO overlap
(`mol.intor('int1e_ovlp')`), `mf.e_tot` and optionally forces (-gradient, Eh/Angstrom).
Unconverged SCFs are stored with converged=False (and no forces) and counted in the summary.
Optional quantum-chemistry targets (`Properties`, see helm_jax/data/reference_targets.py): AO dipole
integrals with the same-basis orbital energies, dipole and polarisability (`--dipole`), the
self-consistent finite-field polarisability (`--polarizability_ff`), and the same targets of a
larger basis at the same geometry (`--targets_basis=def2-tzvp`) for reduced-basis learning.

Open shells: a structure with spin 2S != 0 (`--spin`, or the xyz header's `spin=` /
`multiplicity=`, with `--charge` / `charge=`) is labelled with UKS (UHF for method HF), and
`--unrestricted` (``label_file(..., unrestricted=True)``) asks for UKS/UHF for every structure,
closed shells included. An unrestricted label stores the alpha Fock matrix as `fock` and the
beta one as `fock_beta`, both of the final density (`mf.get_fock(dm=dm)`, `[2, N, N]`), and
UKS/UHF energy and forces; a restricted label has no `fock_beta` (docs/data.md, "Open shells").

Crash safety: every finished structure is written as its own one-group HDF5 file
`<out>.parts/<index:07d>.h5` (temp file, fsync, os.replace), so a kill at any moment
leaves only whole parts. When the requested range is done, `<out>` is rebuilt from the
old `<out>` plus the parts into a temp file that atomically replaces it, after which the
parts are deleted. Rerunning the same command skips every structure found in `<out>` or
in the parts and labels only the rest. The level of theory (and --forces, input file
name) is recorded in `<out>` and `<out>.parts/run.json`; a command that disagrees fails.
`--unrestricted` is recorded as the attr `unrestricted=True` only when given, so files and
parts written before the option existed (no attr) resume as restricted runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time

import h5py
import numpy as np
import tqdm

from helm_jax.data import geometry, h5format, reference_targets as targets_lib
from helm_jax.units import BOHR_ANGSTROM

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
UNRESTRICTED_ATTR = "unrestricted"  # run/file attr, written (True) only by unrestricted runs
_PART_RE = re.compile(r"^(\d{7})\.h5$")


@dataclasses.dataclass(frozen=True)
class LevelOfTheory:
    """What a file's labels mean; stored as file attrs and checked on resume.

    Attributes:
        method: PySCF xc name (e.g. "pbe", "b3lyp") or "HF".
        basis: PySCF basis name.
        ecp: PySCF ECP name, "" for none.
        grid_level: PySCF DFT grid level (recorded for HF too).
        density_fit: whether the SCF used density fitting.
        conv_tol: SCF energy convergence threshold (Eh).
    """

    method: str = "pbe"
    basis: str = "def2-svp"
    ecp: str = ""
    grid_level: int = 3
    density_fit: bool = False
    conv_tol: float = 1e-9

    def __post_init__(self):
        method = "HF" if self.method.upper() == "HF" else self.method.lower()
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "basis", self.basis.lower())
        object.__setattr__(self, "ecp", self.ecp.lower())


@dataclasses.dataclass(frozen=True)
class Properties:
    """Optional targets beyond F, S, E and forces; recorded as file attrs and checked on resume.

    Attributes:
        dipole: store AO dipole integrals and the same-basis reference orbital energies,
            dipole and (non-self-consistent) polarisability.
        polarizability_ff: also the self-consistent finite-field polarisability (six more
            SCFs per structure and basis).
        targets_basis: a larger basis whose orbital energies, dipole and polarisability are
            stored as `targets_*` ("" for none).
    """

    dipole: bool = False
    polarizability_ff: bool = False
    targets_basis: str = ""

    def __post_init__(self):
        object.__setattr__(self, "targets_basis", self.targets_basis.lower())

    def attrs(self) -> dict:
        """File attrs; files written before these existed read as the defaults."""
        return {"qm_dipole": self.dipole, "qm_polarizability_ff": self.polarizability_ff,
                "qm_targets_basis": self.targets_basis}


@dataclasses.dataclass(frozen=True)
class Label:
    """PySCF results for one structure.

    Attributes:
        fock: [N, N] Fock matrix of the final density (Eh, PySCF AO order); the alpha one
            for unrestricted (UKS/UHF) labels.
        overlap: [N, N] AO overlap.
        energy: total energy (Eh).
        forces: [n, 3] Eh/Angstrom, or None (not asked for, or SCF unconverged).
        converged: SCF convergence flag.
        scf_cycles: SCF iterations.
        n_electrons: electrons in the calculation (ECP cores excluded).
        extras: optional targets (`Properties`), name -> array.
        fock_beta: [N, N] beta Fock matrix of the final density for unrestricted labels,
            None for restricted ones.
    """

    fock: np.ndarray
    overlap: np.ndarray
    energy: float
    forces: np.ndarray | None
    converged: bool
    scf_cycles: int
    n_electrons: int
    extras: dict = dataclasses.field(default_factory=dict)
    fock_beta: np.ndarray | None = None

    @property
    def unrestricted(self) -> bool:
        """Whether the label is spin-resolved (UKS/UHF)."""
        return self.fock_beta is not None


def make_scf(mol, level: LevelOfTheory, max_cycle: int = 100, unrestricted: bool | None = None):
    """The PySCF mean-field object of `level` for a built Mole.

    Args:
        mol: built `pyscf.gto.Mole` (its charge and spin set).
        level: level of theory.
        max_cycle: SCF iteration limit.
        unrestricted: UKS/UHF if True, RKS/RHF if False; None picks UKS/UHF exactly when the
            molecule is an open shell (``mol.spin != 0``).

    Returns:
        An RHF / RKS / UHF / UKS object (density-fitted if `level.density_fit`).

    Raises:
        ValueError: a restricted SCF asked for an open-shell molecule.
    """
    from pyscf import dft, scf  # pylint: disable=import-outside-toplevel

    if unrestricted is None:
        unrestricted = mol.spin != 0
    if not unrestricted and mol.spin != 0:
        raise ValueError(f"a restricted SCF cannot describe spin 2S={mol.spin}; use "
                         "unrestricted=True (UKS/UHF)")
    if level.method == "HF":
        mf = scf.UHF(mol) if unrestricted else scf.RHF(mol)
    else:
        mf = dft.UKS(mol) if unrestricted else dft.RKS(mol)
        mf.xc = level.method
        mf.grids.level = level.grid_level
    if level.density_fit:
        mf = mf.density_fit()
    mf.conv_tol = level.conv_tol
    mf.max_cycle = max_cycle
    return mf


def label_structure(structure: geometry.Structure, level: LevelOfTheory, max_cycle: int = 100,
                    forces: bool = False, props: Properties = Properties(),
                    unrestricted: bool = False) -> Label:
    """Runs one SCF and returns its labels.

    Restricted (RKS/RHF) for a closed shell (spin 2S = 0), unrestricted (UKS/UHF) for an open
    shell (2S != 0) or when `unrestricted` is True. An unrestricted label holds the alpha and
    beta Fock matrices of the final density (`mf.get_fock(dm=dm)`, `[2, N, N]`), the UKS/UHF
    energy and forces, and its targets (`reference_targets.scf_properties`) with
    `mo_energy` of shape `[2, K]` (alpha row, beta row).

    Args:
        structure: the geometry with its charge and spin (2S).
        level: level of theory.
        max_cycle: SCF iteration limit.
        forces: also compute analytic forces (only when the SCF converged).
        props: optional targets (AO dipole integrals, reference and large-basis targets).
        unrestricted: UKS/UHF even for a closed shell (its beta Fock then equals the alpha one
            within the SCF tolerance).

    Returns:
        The `Label` (`fock_beta` None for a restricted SCF).

    Raises:
        ValueError: for invalid geometries and a charge/spin the electron count cannot have.
    """
    _, n_electrons, spin = geometry.validate_structure(
        structure.elements, structure.coords, structure.charge, structure.spin,
        basis=level.basis, ecp=level.ecp)
    unrestricted = bool(unrestricted) or spin != 0
    structure = dataclasses.replace(structure, spin=spin)  # a spin of None resolved by parity
    mol = geometry.build_mole(structure, level.basis, level.ecp)
    mf = make_scf(mol, level, max_cycle, unrestricted)
    mf.kernel()
    dm = mf.make_rdm1()  # [N, N] (restricted) or [2, N, N] (alpha, beta) final density
    fock = np.asarray(mf.get_fock(dm=dm))  # h_core + V_eff[dm], no DIIS / level shift
    grad = mf.nuc_grad_method().kernel() if forces and mf.converged else None  # [n, 3] Eh/bohr
    extras = {}
    if props.dipole:
        extras.update(targets_lib.scf_properties(mf, fock, props.polarizability_ff))
    if props.targets_basis:
        big = make_scf(geometry.build_mole(structure, props.targets_basis, level.ecp), level,
                       max_cycle, unrestricted)
        big.kernel()
        extras.update(targets_lib.scf_properties(
            big, big.get_fock(dm=big.make_rdm1()), props.polarizability_ff, prefix="targets_"))
    return Label(fock=fock[0] if unrestricted else fock, overlap=mol.intor("int1e_ovlp"),
                 energy=float(mf.e_tot),
                 forces=None if grad is None else -np.asarray(grad) / BOHR_ANGSTROM,
                 converged=bool(mf.converged), scf_cycles=int(mf.cycles),
                 n_electrons=n_electrons, extras=extras,
                 fock_beta=fock[1] if unrestricted else None)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(final: str, write) -> None:
    """Calls write(tmp_path), fsyncs, then atomically renames the result to `final`."""
    tmp = os.path.join(os.path.dirname(final) or ".",
                       f".{os.path.basename(final)}.tmp.{os.getpid()}")
    write(tmp)
    _fsync_path(tmp)
    os.replace(tmp, final)
    _fsync_path(os.path.dirname(final) or ".")


def _label_task(index: int, structure: geometry.Structure, level: LevelOfTheory,
                max_cycle: int, forces: bool, parts_dir: str,
                props: Properties = Properties(), unrestricted: bool = False) -> tuple[int, bool]:
    """Labels one structure and writes its part file; returns (index, converged)."""
    label = label_structure(structure, level, max_cycle, forces, props, unrestricted)
    key = h5format.group_key(index)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            h5format.write_structure(
                f, key, elements=structure.elements, coords=structure.coords, fock=label.fock,
                overlap=label.overlap, energy=label.energy, forces=label.forces,
                charge=structure.charge, spin=structure.spin, n_electrons=label.n_electrons,
                converged=label.converged, scf_cycles=label.scf_cycles, source=structure.source,
                extras=label.extras, fock_beta=label.fock_beta)

    _atomic_write(os.path.join(parts_dir, key + ".h5"), write)
    return index, label.converged


def _run_tasks(args: list[tuple], workers: int, threads: int, task=None):
    """Runs `task(*a)` (default `_label_task`; a module-level function returning
    `(index, converged)`, so that spawned workers can import it) for every a, in this
    process or a spawn pool; yields converged."""
    task = _label_task if task is None else task
    _worker_init(threads)
    if workers <= 1:
        for a in args:
            yield task(*a)[1]
        return
    with _thread_env(threads):  # spawned children read these at start-up
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init, initargs=(threads, os.getpid()))
        futures = [pool.submit(task, *a) for a in args]
    try:
        for fut in concurrent.futures.as_completed(futures):
            yield fut.result()[1]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_init(threads: int, parent: int | None = None) -> None:
    """Sets PySCF's threads; in a pool worker, also exits the worker when ``parent`` dies
    (even by SIGKILL, which gives the pool no chance to stop it)."""
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(threads)
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, poll_seconds: float = 0.5) -> None:
    """Watcher thread of a pool worker: ``os._exit`` once the parent is gone (the worker is
    then re-parented, so ``getppid`` changes)."""
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os._exit(1)


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """Threads for each worker so that workers * threads <= cores (and <= $OMP_NUM_THREADS)."""
    if threads:
        return threads
    per = max(1, len(os.sched_getaffinity(0)) // workers)
    env = os.environ.get("OMP_NUM_THREADS", "")
    return min(per, int(env)) if env.isdigit() and int(env) > 0 else per


@contextlib.contextmanager
def _thread_env(threads: int):
    """Sets the BLAS/OpenMP thread variables that spawned workers inherit."""
    old = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: str(threads) for k in THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _finished_parts(parts_dir: str) -> dict[str, str]:
    """Group key -> path of every finished part file."""
    if not os.path.isdir(parts_dir):
        return {}
    found = (_PART_RE.match(name) for name in os.listdir(parts_dir))
    return {m.group(1): os.path.join(parts_dir, m.group(0)) for m in found if m}


def _check_same_theory(found: dict, wanted: dict, where: str) -> None:
    """Raises ValueError if `found` (attrs of `where`) disagrees with `wanted`.

    `Properties` attrs and `unrestricted` missing from `found` (files written before they
    existed, or restricted runs, which do not write `unrestricted`) count as the defaults;
    `unrestricted` missing from `wanted` counts as False too.
    """
    wanted = {UNRESTRICTED_ATTR: False, **wanted}
    found = {**Properties().attrs(), UNRESTRICTED_ATTR: False,
             **{k: (v.item() if isinstance(v, np.generic) else v) for k, v in found.items()}}
    diffs = [f"{k}={found.get(k)!r} there, {v!r} here" for k, v in wanted.items()
             if found.get(k) != v]
    if diffs:
        raise ValueError(f"{where} was labelled with different settings ({'; '.join(diffs)}). "
                         "One file holds one level of theory: rerun with the same flags or "
                         "choose another --out.")


def merge_parts(out: str, parts_dir: str, run_attrs: dict) -> None:
    """Atomically rebuilds `out` from the old `out` plus the parts, then deletes the parts.

    Only one labeller may work on a given `out` at a time.
    """
    parts = _finished_parts(parts_dir)
    out_dir, out_name = os.path.split(os.path.abspath(out))
    for stale in glob.glob(os.path.join(out_dir, f".{glob.escape(out_name)}.tmp.*")):
        os.remove(stale)  # left by an assembly that was killed

    def write(tmp):
        with h5py.File(tmp, "w") as dst:
            h5format.write_file_attrs(dst, run_attrs)
            if os.path.exists(out):
                with h5format.open_h5(out) as src:
                    for key in src:
                        if key not in parts:
                            src.copy(src[key], dst, name=key)
            for key, path in sorted(parts.items()):
                try:
                    with h5py.File(path, "r") as src:
                        src.copy(src[key], dst, name=key)
                except (OSError, KeyError) as err:
                    os.remove(path)
                    raise RuntimeError(f"part {path} was unreadable ({err}) and was removed; "
                                       "rerun the same command to relabel it") from err

    if parts:
        _atomic_write(os.path.abspath(out), write)
    if os.path.exists(out):
        shutil.rmtree(parts_dir, ignore_errors=True)


def label_file(input_path: str, out: str, level: LevelOfTheory, *, charge: int = 0,
               spin: int | None = None, max_cycle: int = 100, forces: bool = False,
               workers: int = 1, threads: int | None = None, start: int = 0,
               limit: int | None = None, progress: bool = True,
               props: Properties = Properties(), unrestricted: bool = False) -> dict:
    """Labels structures [start, start + limit) of `input_path` into `out`, resumably.

    Args:
        input_path: xyz / extended-xyz / ASE db file.
        out: output HDF5 file; finished structures already in it (or in its parts
            directory) are skipped.
        level: level of theory; must match the one recorded in an existing `out`.
        charge: default charge for frames without one.
        spin: default 2S for frames without one (None: by electron parity).
        max_cycle: SCF iteration limit.
        forces: also store forces.
        workers: worker processes (1 = label in this process).
        threads: threads per worker (default: cores // workers).
        start: first structure index.
        limit: number of structures from `start` (None: all).
        progress: show a tqdm progress bar with ETA.
        props: optional targets; must match the ones recorded in an existing `out`.
        unrestricted: UKS/UHF for every structure, closed shells included (open shells are
            always unrestricted). Recorded as the file attr `unrestricted=True` (absent when
            False, so files written before the option existed resume unchanged); must match
            an existing `out`.

    Returns:
        Summary dict: requested, skipped, labelled, unconverged_new, in_file,
        unconverged_in_file, seconds.
    """
    t0 = time.time()
    structures = geometry.read_structures(input_path, charge, spin)
    periodic = [s.source for s in structures if s.is_periodic]
    if periodic:
        raise ValueError(f"{len(periodic)} periodic frame(s) (a cell with pbc), e.g. "
                         f"{periodic[0]}: label them with PySCF-PBC (data_prep/label.py "
                         "--kmesh=NX,NY,NZ, helm_jax.data.labelling_pbc), not as molecules")
    stop = len(structures) if limit is None else min(len(structures), start + limit)
    run_attrs = {**dataclasses.asdict(level), "forces": bool(forces),
                 "input_file": os.path.basename(input_path), **props.attrs()}
    if unrestricted:
        run_attrs[UNRESTRICTED_ATTR] = True
    parts_dir = out + ".parts"
    done, resumed = resume_state(out, parts_dir, run_attrs)
    todo = [i for i in range(start, stop) if h5format.group_key(i) not in done]
    _validate_all([structures[i] for i in todo], level)
    start_parts(parts_dir, run_attrs, resumed)  # state is written only for validated input
    args = [(i, structures[i], level, max_cycle, forces, parts_dir, props, bool(unrestricted))
            for i in todo]
    unconverged = run_with_progress(args, workers, threads, progress, _label_task, "mol")
    return finish_run(out, parts_dir, run_attrs, stop - start, len(todo), unconverged, t0)


def resume_state(out: str, parts_dir: str, run_attrs: dict) -> tuple[set, bool]:
    """Group keys already labelled (in `out` or its parts) and whether a parts directory
    with work and its `run.json` exists; raises ValueError when `out` or the parts were
    labelled with other settings than `run_attrs` (`_check_same_theory`)."""
    done = set()
    if os.path.exists(out):
        try:
            f = h5format.open_h5(out)
        except ValueError as err:
            raise ValueError(f"{err} Move {out} away to relabel its structures.") from err
        with f:
            _check_same_theory(dict(f.attrs), {"format": h5format.FORMAT, **run_attrs}, out)
            done.update(f.keys())
    run_json = os.path.join(parts_dir, "run.json")
    finished = _finished_parts(parts_dir) if os.path.isdir(parts_dir) else set()
    resumed = bool(finished) and os.path.exists(run_json)
    if resumed:  # settings bind only once work exists
        with open(run_json) as fh:
            _check_same_theory(json.load(fh), run_attrs, parts_dir)
    done.update(finished)
    return done, resumed


def start_parts(parts_dir: str, run_attrs: dict, resumed: bool) -> None:
    """Creates the parts directory and records the settings in its `run.json`."""
    os.makedirs(parts_dir, exist_ok=True)
    if not resumed:
        _atomic_write(os.path.join(parts_dir, "run.json"),
                      lambda tmp: _write_json(tmp, run_attrs))


def run_with_progress(args: list[tuple], workers: int, threads: int | None, progress: bool,
                      task, unit: str) -> int:
    """Runs `task(*a)` for every a (`_run_tasks`) under a progress bar; returns the number
    of unconverged SCFs."""
    per_worker = threads_per_worker(workers, threads)
    unconverged = 0
    with tqdm.tqdm(total=len(args), unit=unit, disable=not progress, file=sys.stderr) as bar:
        for converged in _run_tasks(args, workers, per_worker, task):
            unconverged += not converged
            bar.update(1)
            bar.set_postfix(unconverged=unconverged)
    return unconverged


def finish_run(out: str, parts_dir: str, run_attrs: dict, requested: int, labelled: int,
               unconverged: int, t0: float) -> dict:
    """Merges the parts into `out` and returns the run summary."""
    merge_parts(out, parts_dir, run_attrs)
    summary = {"requested": requested, "skipped": requested - labelled,
               "labelled": labelled, "unconverged_new": unconverged}
    if os.path.exists(out):
        data = h5format.H5Dataset(out)
        summary.update(in_file=len(data), unconverged_in_file=len(data) - len(
            data.converged_indices()))
        data.close()
    summary["seconds"] = round(time.time() - t0, 2)
    return summary


def _write_json(path: str, obj) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh)


def _validate_all(structures: list[geometry.Structure], level: LevelOfTheory) -> None:
    """Validates every structure before any SCF (geometry, basis coverage, a charge/spin the
    electron count can have); raises one ValueError listing failures."""
    errors = []
    for s in structures:
        try:
            geometry.validate_structure(s.elements, s.coords, s.charge, s.spin,
                                        basis=level.basis, ecp=level.ecp)
        except ValueError as err:
            errors.append(f"  {s.source}: {err}")
    if errors:
        raise ValueError(f"{len(errors)} invalid structure(s), nothing labelled:\n"
                         + "\n".join(errors[:20]) + "\nFix the input or --charge/--spin.")
