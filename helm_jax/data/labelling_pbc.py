"""Labels periodic structures with PySCF-PBC k-point SCFs into real-space blocks H_ij(T).

Library of ``data_prep/label.py`` for input frames with a cell (docs/periodic.md):

    python data_prep/label.py --input=hbn.extxyz --out=hbn.h5 --xc=pbe --kmesh=3,3,1 \
        --pseudo=gth-pbe --basis=gth-dzvp --workers=2

Per structure it runs KRKS (``--xc``) or KRHF (``--method=hf``) on the Gamma-centred
Monkhorst-Pack mesh ``kmesh`` (``cell.make_kpts``), with Gaussian density fitting (GDF,
``--pbc_df=gdf``, the default) or plane-wave FFTDF (``--pbc_df=fftdf``, for GTH
pseudopotentials), all-electron (``--pseudo=""``; KS on atom-centred Becke grids) or with
GTH pseudopotentials and their bases (KS on the uniform grid of ``--ke_cutoff``). From the
converged density it takes ``F(k) = mf.get_fock(dm=dm)`` (no DIIS or level shift) and
``S(k) = mf.get_ovlp()`` at every k and transforms them exactly to the Born-von Karman
supercell, ``H_BvK(T) = (1/N) sum_k exp(-2 pi i k . T) F(k)``
(:func:`helm_jax.data.periodic.real_space_blocks`). For each atom pair (i, j) and each BvK
class of T it stores the block at the class's minimum-image T
(:func:`helm_jax.data.periodic.bvk_pairs`) when that pair is closer than ``--pbc_cutoff``
(Angstrom; default: every class, so the stored blocks give back F(k) on the mesh exactly);
pairs within the cutoff whose T is not the minimum image of its class are the ones a bigger
mesh would need, and are counted (``n_pairs_beyond_bvk``), not stored.

Stored per structure (h5format.write_periodic_structure): raw ``H(T)``, ``S(T)`` (never
shifted), the total energy per cell, the Fermi level and, without smearing, HOMO/LUMO/gap
over the mesh; with ``band_path=N`` (``--band_path``) also PySCF's own ``mf.get_bands`` of
the converged SCF at N points along :func:`helm_jax.data.periodic.high_symmetry_path`
(``path_kpts``, ``path_bands``), the off-mesh reference for bands interpolated from H(T).
Fermi convention: with ``--smearing`` (Fermi-Dirac width, Eh) the chemical
potential of the smeared occupations (:func:`fermi_dirac_mu` of the final orbital energies;
the energy is then PySCF's ``e_tot``, not the free energy); without it the highest occupied
level over the mesh (PySCF's ``get_fermi``, the valence-band maximum of an insulator).
``PeriodicLabels.fock_minus_mu_s`` gives ``H - mu S``.

Resumable and parallel exactly like the molecular labeller (it reuses
:mod:`helm_jax.data.labelling`'s parts directory, ``merge_parts``, settings check and
worker pool): rerun the same command after an interruption. Only closed-shell, neutral
cells (restricted KRKS/KRHF) are labelled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import h5py
import numpy as np

from helm_jax.data import geometry, h5format, labelling
from helm_jax.data import periodic as periodic_lib
from helm_jax.data.records import PeriodicLabels

DENSITY_FITS = ("gdf", "fftdf")


@dataclasses.dataclass(frozen=True)
class PeriodicSettings:
    """What a periodic file's labels mean; stored as file attrs and checked on resume.

    Attributes:
        method: PySCF xc name (KRKS) or "HF" (KRHF).
        basis: PySCF basis name (e.g. "gth-dzvp" with a GTH pseudopotential, or an
            all-electron basis such as "def2-svp").
        pseudo: PySCF pseudopotential ("gth-pbe"), "" for all-electron.
        kmesh: Monkhorst-Pack mesh (Gamma-centred), 1 along non-periodic axes.
        density_fit: "gdf" (Gaussian density fitting) or "fftdf" (plane waves).
        ke_cutoff: kinetic-energy cutoff of the uniform grid (Eh); 0 = PySCF's default for
            the basis.
        grid_level: Becke grid level for all-electron KS.
        conv_tol: SCF energy convergence threshold (Eh).
        smearing: Fermi-Dirac smearing width (Eh); 0 = none (insulators).
        pbc_cutoff: store only pairs closer than this (Angstrom); 0 = every BvK class.
        band_path: also store PySCF's ``mf.get_bands`` of the converged SCF at this many
            k-points along :func:`helm_jax.data.periodic.high_symmetry_path` (datasets
            ``path_kpts``, ``path_bands``): the off-mesh band reference; 0 = off.
    """

    method: str = "pbe"
    basis: str = "gth-dzvp"
    pseudo: str = "gth-pbe"
    kmesh: tuple = (3, 3, 1)
    density_fit: str = "gdf"
    ke_cutoff: float = 0.0
    grid_level: int = 3
    conv_tol: float = 1e-9
    smearing: float = 0.0
    pbc_cutoff: float = 0.0
    band_path: int = 0

    def __post_init__(self):
        method = "HF" if self.method.upper() == "HF" else self.method.lower()
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "basis", self.basis.lower())
        object.__setattr__(self, "pseudo", self.pseudo.lower())
        object.__setattr__(self, "density_fit", self.density_fit.lower())
        object.__setattr__(self, "kmesh", tuple(int(k) for k in self.kmesh))
        object.__setattr__(self, "band_path", int(self.band_path))
        if self.band_path < 0:
            raise ValueError(f"band_path must be >= 0 (0 = off), got {self.band_path}")
        if self.density_fit not in DENSITY_FITS:
            raise ValueError(f"density_fit must be one of {DENSITY_FITS}, not "
                             f"{self.density_fit!r}")
        if len(self.kmesh) != 3 or min(self.kmesh) < 1:
            raise ValueError(f"kmesh must be three positive integers, got {self.kmesh}")
        for name in ("ke_cutoff", "smearing", "pbc_cutoff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = default), got {getattr(self, name)}")

    def attrs(self) -> dict:
        """File attrs (HDF5- and JSON-safe); `ecp` is "" so molecular tools read the basis."""
        d = dataclasses.asdict(self)
        d["kmesh"] = ",".join(str(k) for k in self.kmesh)
        return {h5format.PERIODIC_ATTR: True, "ecp": "", **d}


@dataclasses.dataclass(frozen=True)
class PeriodicLabel:
    """PySCF-PBC results for one structure: the labels and the SCF facts."""

    labels: PeriodicLabels
    energy: float
    converged: bool
    scf_cycles: int
    n_electrons: int
    n_beyond_bvk: int
    seconds_band_path: float = 0.0


def _dimension(pbc: np.ndarray, where: str) -> int:
    """PySCF's `cell.dimension`: periodic axes must come first (PySCF's convention)."""
    dim = int(np.count_nonzero(pbc))
    if dim == 1:
        raise ValueError(
            f"{where}: a 1-D chain (pbc={pbc.tolist()}): PySCF-PBC cannot build 1-D cells "
            "(no uniform grids for dimension 1); label it as a 2-D cell with a vacuum "
            "lattice vector along the second axis (pbc=\"T T F\", k-mesh N,1,1)")
    if not np.all(pbc[:dim]):
        raise ValueError(
            f"{where}: pbc={pbc.tolist()}: PySCF needs the periodic axes first (a 2-D system "
            "as pbc=\"T T F\" with the vacuum along the third lattice vector); reorder the "
            "lattice vectors (and coordinates stay as they are)")
    return dim


def build_cell(structure: geometry.Structure, settings: PeriodicSettings, verbose: int = 0):
    """The PySCF `pbc.gto.Cell` of a periodic structure (Angstrom, spherical AOs).

    Raises:
        ValueError: not periodic, a non-periodic axis without a (vacuum) lattice vector, a
            k-mesh with more than one point along a non-periodic axis, periodic axes not
            first, or a basis/pseudopotential that misses an element.
    """
    from pyscf.pbc import gto  # pylint: disable=import-outside-toplevel

    where = structure.source
    if not structure.is_periodic:
        raise ValueError(f"{where}: not periodic (no cell or pbc all false); label it with "
                         "the molecular labeller")
    z, xyz, cell, pbc = geometry.check_periodic(structure.elements, structure.coords,
                                                structure.cell, structure.pbc, where)
    dimension = _dimension(pbc, where)
    periodic_lib.check_kmesh(settings.kmesh, pbc)
    lengths = np.linalg.norm(cell, axis=1)
    if np.any(lengths < 1e-8) or abs(np.linalg.det(cell)) < 1e-8 * np.prod(lengths):
        raise ValueError(f"{where}: PySCF-PBC needs all three lattice vectors; give the "
                         "non-periodic axis a vacuum lattice vector (e.g. 15-20 A of vacuum "
                         "for a 2-D layer)")
    if structure.charge != 0 or structure.spin not in (0, None):
        raise ValueError(f"{where}: charge={structure.charge} spin={structure.spin}: only "
                         "neutral closed-shell cells are labelled (restricted KRKS/KRHF)")
    c = gto.Cell()
    c.a = cell
    c.atom = [[int(e), tuple(float(v) for v in r)] for e, r in zip(z, xyz)]
    c.unit = "Angstrom"
    c.basis = settings.basis
    if settings.pseudo:
        c.pseudo = settings.pseudo
    c.dimension = dimension
    if settings.ke_cutoff:
        c.ke_cutoff = settings.ke_cutoff
    c.cart = False
    c.verbose = verbose
    try:
        c.build()
    except Exception as err:  # PySCF raises several types for a missing basis / pseudo
        raise ValueError(f"{where}: PySCF cannot build the cell in basis {settings.basis!r}"
                         f"{' / pseudo ' + repr(settings.pseudo) if settings.pseudo else ''}: "
                         f"{err}") from err
    if c.nelectron % 2:
        raise ValueError(f"{where}: {c.nelectron} electrons per cell (odd): only closed-shell "
                         "cells are labelled (restricted KRKS/KRHF)")
    return c


def make_kscf(cell, settings: PeriodicSettings, max_cycle: int = 100):
    """The PySCF k-point mean-field object of `settings` for a built cell."""
    from pyscf.pbc import dft, scf  # pylint: disable=import-outside-toplevel

    kpts = cell.make_kpts(list(settings.kmesh))
    if settings.method == "HF":
        mf = scf.KRHF(cell, kpts)
    else:
        mf = dft.KRKS(cell, kpts)
        mf.xc = settings.method
        if not settings.pseudo:  # all-electron densities need atom-centred grids
            from pyscf.pbc.dft import gen_grid  # pylint: disable=import-outside-toplevel
            mf.grids = gen_grid.BeckeGrids(cell)
            mf.grids.level = settings.grid_level
    if settings.density_fit == "gdf":
        mf = mf.density_fit()
        grids = getattr(mf, "grids", None)  # KRKS.density_fit() switches to Becke grids
        if type(grids).__name__ == "BeckeGrids":  # (PySCF's default level 3)
            grids.level = settings.grid_level
        if settings.method != "HF":
            libxc = mf._numint.libxc  # pylint: disable=protected-access
            if not libxc.is_hybrid_xc(mf.xc):  # no exact exchange: J-only fitting
                mf.with_df._j_only = True  # pylint: disable=protected-access
    if settings.smearing:
        from pyscf.pbc.scf import addons  # pylint: disable=import-outside-toplevel
        mf = addons.smearing_(mf, sigma=settings.smearing, method="fermi")
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = max_cycle
    return mf


def run_scf(structure: geometry.Structure, settings: PeriodicSettings, max_cycle: int = 100):
    """Builds the cell, runs the k-point SCF and returns the mean-field object."""
    mf = make_kscf(build_cell(structure, settings), settings, max_cycle)
    mf.kernel()
    return mf


def labels_from_scf(mf, structure: geometry.Structure, settings: PeriodicSettings
                    ) -> PeriodicLabel:
    """The real-space labels of a converged (or not) k-point SCF (module docstring).

    Args:
        mf: a k-point SCF on the Gamma-centred `settings.kmesh` (after `kernel()`).
        structure: its structure (coordinates as in the cell, not wrapped).
        settings: the settings it ran with (`kmesh`, `pbc_cutoff`, `smearing`).

    Returns:
        The `PeriodicLabel`.
    """
    cell = mf.cell
    kmesh = np.asarray(settings.kmesh, np.int64)
    kfrac = cell.get_scaled_kpts(mf.kpts)  # [n_k, 3]
    dm = mf.make_rdm1()
    fock_k = np.asarray(mf.get_fock(dm=dm))  # [n_k, nao, nao], no DIIS / level shift
    ovlp_k = np.asarray(mf.get_ovlp())
    try:
        trans, fock_t = periodic_lib.real_space_blocks(fock_k, kmesh, kfrac)
        trans_s, ovlp_t = periodic_lib.real_space_blocks(ovlp_k, kmesh, kfrac)
    except ValueError as err:
        raise ValueError(f"{structure.source}: {err}. FFTDF at a low ke_cutoff breaks "
                         "time-reversal symmetry of F(k) (docs/periodic.md): raise "
                         "--ke_cutoff or use --pbc_df=gdf") from err
    assert np.array_equal(trans, trans_s)
    cutoff = settings.pbc_cutoff or None
    bvk = periodic_lib.bvk_pairs(structure.coords, structure.cell, structure.pbc, kmesh,
                                 cutoff, fold_axes=~np.asarray(structure.pbc, bool))
    slices = cell.aoslice_by_atom()
    n_ao = (slices[:, 3] - slices[:, 2]).astype(np.int32)  # [n_atoms]
    pl = bvk.pairs
    fock_blocks = periodic_lib.gather_blocks(fock_t, trans, pl.i, pl.j, bvk.bvk_index, n_ao)
    ovlp_blocks = periodic_lib.gather_blocks(ovlp_t, trans, pl.i, pl.j, bvk.bvk_index, n_ao)
    homo = lumo = gap = None
    mo_e = [np.asarray(e) for e in mf.mo_energy]
    mo_occ = [np.asarray(o) for o in mf.mo_occ]
    if settings.smearing:
        fermi = fermi_dirac_mu(mo_e, cell.nelectron, settings.smearing)
    else:
        occ = np.concatenate([e[o > 1e-6] for e, o in zip(mo_e, mo_occ)])
        vir = np.concatenate([e[o <= 1e-6] for e, o in zip(mo_e, mo_occ)])
        homo = float(occ.max())
        lumo = float(vir.min()) if vir.size else None
        gap = None if lumo is None else lumo - homo
        fermi = homo
    path_kpts = path_bands = None
    t_bands = time.perf_counter()
    if settings.band_path:
        path_kpts, path_bands = band_path_reference(mf, structure, settings.band_path, dm=dm)
    t_bands = time.perf_counter() - t_bands
    labels = PeriodicLabels(
        pairs=np.stack([pl.i, pl.j], 1).astype(np.int32),
        translations=pl.translation.astype(np.int32), fock_blocks=fock_blocks,
        overlap_blocks=ovlp_blocks,
        block_offsets=periodic_lib.block_offsets(pl.i, pl.j, n_ao), n_ao_per_atom=n_ao,
        weight=bvk.weight, alias_distance=bvk.alias_distance,
        kmesh=kmesh.astype(np.int32), fermi=fermi, homo=homo, lumo=lumo, gap=gap,
        path_kpts=path_kpts, path_bands=path_bands, n_electrons=int(cell.nelectron))
    return PeriodicLabel(labels=labels, energy=float(mf.e_tot),
                         converged=bool(mf.converged),
                         scf_cycles=int(getattr(mf, "cycles", -1) or -1),
                         n_electrons=int(cell.nelectron), n_beyond_bvk=bvk.n_beyond_bvk,
                         seconds_band_path=t_bands)


def band_path_reference(mf, structure: geometry.Structure, n_points: int, kind=None,
                        dm=None) -> tuple[np.ndarray, np.ndarray]:
    """PySCF's own bands of a converged k-point SCF along a high-symmetry path.

    ``mf.get_bands`` builds ``F(k) = h(k) + V[dm](k)`` from the SCF's density at arbitrary
    k (with GDF it rebuilds the fitted integrals to include those k-points; call it after
    the labels, which use the SCF's own mesh) and diagonalises it against ``S(k)`` with
    canonical orthogonalisation.

    Args:
        mf: the k-point SCF (after ``kernel()``).
        structure: its structure (``cell``, ``pbc`` give the path).
        n_points: points along :func:`helm_jax.data.periodic.high_symmetry_path`.
        kind: path kind (None: detected from the cell).
        dm: density matrices (default ``mf.make_rdm1()``).

    Returns:
        ``(path_kpts float64 [P, 3] fractional, path_bands float64 [P, nao] Eh)``, bands
        ascending and NaN-padded where canonical orthogonalisation dropped vectors.
    """
    kfrac, _, _ = periodic_lib.high_symmetry_path(structure.cell, structure.pbc, n_points,
                                                  kind)
    cell = mf.cell
    energies, _ = mf.get_bands(cell.get_abs_kpts(kfrac), dm_kpts=dm)
    nao = cell.nao_nr()
    bands = np.full((len(kfrac), nao), np.nan)
    for n, e in enumerate(energies):
        e = np.sort(np.asarray(e).real)
        bands[n, :len(e)] = e
    return np.asarray(kfrac, np.float64), bands


def fermi_dirac_mu(mo_energy_kpts, n_electrons: int, sigma: float) -> float:
    """The chemical potential (Eh) of Fermi-Dirac occupations ``2 / (1 + exp((e - mu) /
    sigma))`` averaged over the k-points that hold ``n_electrons`` per cell (what PySCF's
    smearing solves for in each SCF cycle; recomputed from the final orbital energies since
    PySCF does not keep it), by bisection to 1e-13 Eh."""
    e = np.concatenate([np.asarray(x).reshape(-1) for x in mo_energy_kpts])
    n_k = len(mo_energy_kpts)

    def count(mu):
        x = np.clip((e - mu) / sigma, -700, 700)
        return 2.0 * np.sum(1.0 / (1.0 + np.exp(x))) / n_k

    lo, hi = e.min() - 50 * sigma, e.max() + 50 * sigma
    while hi - lo > 1e-13:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if count(mid) < n_electrons else (lo, mid)
    return 0.5 * (lo + hi)


def label_structure(structure: geometry.Structure, settings: PeriodicSettings,
                    max_cycle: int = 100) -> PeriodicLabel:
    """Runs one k-point SCF and returns its real-space labels."""
    return labels_from_scf(run_scf(structure, settings, max_cycle), structure, settings)


def write_label(f: h5py.Group, key: str, structure: geometry.Structure,
                label: PeriodicLabel) -> None:
    """Writes one labelled structure group (`h5format.write_periodic_structure`)."""
    h5format.write_periodic_structure(
        f, key, elements=structure.elements, coords=structure.coords, cell=structure.cell,
        pbc=structure.pbc, labels=label.labels, energy=label.energy,
        charge=structure.charge, spin=structure.spin, n_electrons=label.n_electrons,
        converged=label.converged, scf_cycles=label.scf_cycles, source=structure.source)


def _label_task_pbc(index: int, structure: geometry.Structure, settings: PeriodicSettings,
                    max_cycle: int, parts_dir: str) -> tuple[int, bool]:
    """Labels one periodic structure and writes its part file; returns (index, converged)."""
    t0 = time.perf_counter()
    mf = run_scf(structure, settings, max_cycle)
    t1 = time.perf_counter()
    label = labels_from_scf(mf, structure, settings)
    t2 = time.perf_counter()
    key = h5format.group_key(index)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            write_label(f, key, structure, label)
            f[key].attrs["n_pairs_beyond_bvk"] = int(label.n_beyond_bvk)
            # wall seconds (provenance, not checksummed): SCF, labels (band path included)
            f[key].attrs["seconds_scf"] = round(t1 - t0, 2)
            f[key].attrs["seconds_labels"] = round(t2 - t1, 2)
            f[key].attrs["seconds_band_path"] = round(label.seconds_band_path, 2)

    atomic_write = labelling._atomic_write  # pylint: disable=protected-access
    atomic_write(os.path.join(parts_dir, key + ".h5"), write)
    return index, label.converged


def validate_all(structures: list[geometry.Structure], settings: PeriodicSettings) -> None:
    """Builds every cell before any SCF (geometry, lattice, k-mesh, basis and pseudo
    coverage, a closed-shell electron count); raises one ValueError listing failures."""
    errors = []
    for s in structures:
        try:
            build_cell(s, settings)
            if settings.band_path:
                periodic_lib.high_symmetry_path(s.cell, s.pbc, settings.band_path)
        except ValueError as err:
            errors.append(f"  {s.source}: {err}" if "high_symmetry_path" in str(err)
                          else f"  {err}")
    if errors:
        raise ValueError(f"{len(errors)} invalid periodic structure(s), nothing labelled:\n"
                         + "\n".join(errors[:20]))


def _check_band_path(out: str, parts_dir: str, band_path: int) -> None:
    """Refuses to resume `out` (or its parts) labelled with another ``band_path``; files
    and parts written before the setting existed count as 0 (``resume_state`` checks the
    other settings)."""
    found = []
    if os.path.exists(out):
        with h5format.open_h5(out) as f:
            found.append((out, f.attrs.get("band_path", 0)))
    run_json = os.path.join(parts_dir, "run.json")
    finished = labelling._finished_parts(parts_dir)  # pylint: disable=protected-access
    if finished and os.path.exists(run_json):
        with open(run_json) as fh:
            found.append((parts_dir, json.load(fh).get("band_path", 0)))
    for where, value in found:
        if int(value) != int(band_path):
            raise ValueError(f"{where} was labelled with different settings (band_path="
                             f"{int(value)} there, {int(band_path)} here). One file holds one "
                             "level of theory: rerun with the same flags or choose another "
                             "--out.")


def label_file(input_path: str, out: str, settings: PeriodicSettings, *,
               max_cycle: int = 100, workers: int = 1, threads: int | None = None,
               start: int = 0, limit: int | None = None, progress: bool = True) -> dict:
    """Labels periodic structures [start, start + limit) of `input_path` into `out`,
    resumably (the molecular labeller's machinery, `helm_jax.data.labelling`).

    Args:
        input_path: extended xyz (`Lattice=` and `pbc=` per frame) or ASE db.
        out: output HDF5 file; finished structures in it or its parts directory are skipped.
        settings: must match the ones recorded in an existing `out`.
        max_cycle, workers, threads, start, limit, progress: as `labelling.label_file`.

    Returns:
        Summary dict: requested, skipped, labelled, unconverged_new, in_file,
        unconverged_in_file, seconds.

    Raises:
        ValueError: a frame without a cell, invalid structures, or other settings than
            those `out` was labelled with.
    """
    t0 = time.time()
    structures = geometry.read_structures(input_path)
    molecules = [s.source for s in structures if not s.is_periodic]
    if molecules:
        raise ValueError(f"{len(molecules)} frame(s) without a periodic cell, e.g. "
                         f"{molecules[0]}: a periodic file holds only periodic structures "
                         "(extended xyz needs Lattice=\"...\" and pbc=\"T T F\" per frame); "
                         "label molecules separately without --kmesh")
    stop = len(structures) if limit is None else min(len(structures), start + limit)
    run_attrs = {**settings.attrs(), "input_file": os.path.basename(input_path)}
    parts_dir = out + ".parts"
    _check_band_path(out, parts_dir, settings.band_path)
    check_attrs = {k: v for k, v in run_attrs.items() if k != "band_path"}
    done, resumed = labelling.resume_state(out, parts_dir, check_attrs)
    todo = [i for i in range(start, stop) if h5format.group_key(i) not in done]
    validate_all([structures[i] for i in todo], settings)
    labelling.start_parts(parts_dir, run_attrs, resumed)
    args = [(i, structures[i], settings, max_cycle, parts_dir) for i in todo]
    unconverged = labelling.run_with_progress(args, workers, threads, progress,
                                              _label_task_pbc, "cell")
    return labelling.finish_run(out, parts_dir, run_attrs, stop - start, len(todo),
                                unconverged, t0)
