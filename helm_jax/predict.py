"""Inference from a checkpoint: Hamiltonians, SCF initial guesses, energies and forces.

    predictor = Predictor.from_checkpoint("workdirs/omol_pretrain")
    h = predictor.predict_hamiltonian(mol)        # [n_ao, n_ao], PySCF AO order
    mf.kernel(dm0=predictor.initial_guess(mol))   # SCF started from the predicted density
    e, f = predictor.energy_and_forces(atoms)     # eV, eV/A (energy head)

Open shells (a model with ``config.heads.spin`` other than "none"; docs/model_and_training.md,
"Open shells"): the charge and 2S come from ``mol.charge``, ``mol.spin`` or
``atoms.info["charge"]``, ``atoms.info["spin"]`` (2S; or ``"multiplicity"`` = 2S + 1), and
``predict_hamiltonian`` returns ``[2, n_ao, n_ao]`` (alpha, beta) for 2S != 0,
``initial_guess`` a UKS density ``[2, n_ao, n_ao]``.

Large structures (docs/using_a_checkpoint.md, "Sparse Hamiltonians"): above
``Predictor.sparse_above_ao`` AOs (:data:`SPARSE_ABOVE_AO`) ``predict_hamiltonian`` returns
a block-sparse ``scipy.sparse.csr_matrix`` (:mod:`helm_jax.sparse_hamiltonian`; a tuple
``(alpha, beta)`` of two for an open shell) instead of a dense array; ``sparse=True/False``
forces either. What needs dense matrices (a dense H, ``initial_guess``, the orbital energies
of ``write_predictions``) is refused above ``Predictor.dense_limit_ao`` AOs
(:data:`DENSE_LIMIT_AO`) with a ValueError instead of running out of memory.

Inputs are ``ase.Atoms``, built ``pyscf.gto.Mole`` objects (whose basis and ECP must be the
checkpoint's) or :class:`helm_jax.data.records.Record`, alone or in a list. Molecules are
grouped by size class (atom and edge counts rounded up to powers of two) and batched with
budgets that depend only on the class (:meth:`Predictor.batches`), so the jit-compiled
model sees only a few shapes: predicting thousands of different molecules compiles a
handful of programs (:attr:`Predictor.num_compilations`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import h5py
import jax
import numpy as np
import scipy.sparse as sp

from helm_jax import basis as basis_lib
from helm_jax import graph_parallel
from helm_jax import checkpoint as ckpt_lib
from helm_jax import pyscf_metrics
from helm_jax import sparse_hamiltonian as sparse_lib
from helm_jax.data import batching, geometry, h5format, labelling
from helm_jax.data.graphs import GraphSpec, MolGraph, build_graph
from helm_jax.data.records import Record
from helm_jax.units import HARTREE_EV
from helm_jax.model import assemble, helm

MIN_NODES, MIN_EDGES = 4, 8  # smallest size classes (atoms, directed edges)
# A lone structure above this many edges is padded to graph_parallel.bucket sizes (at most
# 12.5 % padding) instead of its power-of-two class (up to 2x the edges, so 2x the time).
FINE_BUCKETS_ABOVE_EDGES = 1 << 16

#: Default ``Predictor.sparse_above_ao``: structures with more AOs get a CSR H by default.
#: A dense H of 4,096 AOs is 128 MiB (its dense assembly peaks at about 5.5 such matrices);
#: by then a 5 A cutoff leaves a large share of the atom pairs without a block, and the CSR
#: (12 bytes per stored entry) is the smaller one.
SPARSE_ABOVE_AO = 4096
#: Default ``Predictor.dense_limit_ao``: the most AOs of a dense H, initial guess or
#: eigen-solution. Measured peaks (docs/using_a_checkpoint.md, "Sparse Hamiltonians"): the
#: dense assembly takes 5.5 and the eigensolver 5.0 extra ``n_ao x n_ao`` float64 matrices on
#: top of H and S, so an initial guess needs about 8 x 8 n_ao^2 bytes: 15.3 GiB at 16,000 AOs,
#: which leaves room for Python, JAX and PySCF on a 24 GiB machine (20,000 AOs would need
#: 23.8 GiB).
DENSE_LIMIT_AO = 16000


def _pow2(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


def check_mole(mol, template: basis_lib.Template) -> None:
    """Raises ValueError unless ``mol`` uses exactly the template's basis and ECP.

    Every shell is compared with a Mole built with the template's basis (angular momentum,
    exponents, contraction coefficients), and every atom's ECP core electrons.
    """
    if mol.cart:
        raise ValueError("The Mole uses Cartesian AOs (cart=True); HELM predicts spherical "
                         "AOs: build it with cart=False.")
    z = np.array([basis_lib.atomic_number(mol.atom_pure_symbol(i)) for i in range(mol.natm)])
    for zi in sorted(set(z.tolist())):
        template.element(zi)  # clear error for an element outside the checkpoint
    ref = pyscf_metrics.record_mole(Record(elements=z, coords=mol.atom_coords("Angstrom"),
                                        charge=mol.charge, spin=mol.spin),
                                 labelling.LevelOfTheory(basis=template.basis,
                                                         ecp=template.ecp))
    wanted = f"basis={template.basis!r}" + (f", ecp={template.ecp!r}" if template.ecp else "")
    same = ref.nbas == mol.nbas and all(
        mol.bas_atom(i) == ref.bas_atom(i) and mol.bas_angular(i) == ref.bas_angular(i)
        and np.array_equal(mol.bas_exp(i), ref.bas_exp(i))
        and np.allclose(mol.bas_ctr_coeff(i), ref.bas_ctr_coeff(i), rtol=1e-10, atol=0)
        for i in range(mol.nbas))
    if not same:
        raise ValueError(f"The Mole's basis differs from the checkpoint's ({wanted}, "
                         f"{ref.nao} AOs; the Mole has {mol.nao}): build it with {wanted}.")
    for i in range(mol.natm):
        if mol.atom_nelec_core(i) != ref.atom_nelec_core(i):
            raise ValueError(f"Atom {i} ({mol.atom_pure_symbol(i)}) has "
                             f"{mol.atom_nelec_core(i)} ECP core electrons but the checkpoint's "
                             f"basis has {ref.atom_nelec_core(i)}: build the Mole with {wanted}.")


def to_record(x: Any, template: basis_lib.Template) -> Record:
    """An ``ase.Atoms``, built PySCF ``Mole`` or Record as a Record (basis checked)."""
    if isinstance(x, Record):
        return x
    if hasattr(x, "atom_coords") and hasattr(x, "nbas"):
        check_mole(x, template)
        z = [basis_lib.atomic_number(x.atom_pure_symbol(i)) for i in range(x.natm)]
        return Record(elements=np.asarray(z, np.int32), coords=x.atom_coords("Angstrom"),
                      charge=int(x.charge), spin=int(x.spin))
    if hasattr(x, "get_positions") and hasattr(x, "numbers"):
        if np.any(x.pbc):
            raise ValueError("HELM models molecules: periodic ase.Atoms (pbc=True) are not "
                             "supported.")
        return Record(elements=np.asarray(x.numbers, np.int32),
                      coords=np.asarray(x.get_positions(), np.float64),
                      charge=int(round(float(x.info.get("charge", 0)))),
                      spin=_atoms_spin(x.info))
    raise TypeError(f"Expected ase.Atoms, pyscf.gto.Mole or Record, got {type(x).__name__}.")


def _atoms_spin(info: dict) -> int:
    """2S of an ``ase.Atoms`` from ``info["spin"]`` (2S) or ``info["multiplicity"]`` (2S + 1);
    0 when neither is given (PySCF's default)."""
    if info.get("spin") is not None:
        return int(round(float(info["spin"])))
    if info.get("multiplicity") is not None:
        return int(round(float(info["multiplicity"]))) - 1
    return 0


class Predictor:
    """A model rebuilt from a checkpoint, with batched, shape-bucketed jit inference.

    Args:
      loaded: :func:`helm_jax.checkpoint.load_model` output.
      max_molecules: most molecules per batch.
      max_edges: most padded edges per batch (a larger molecule gets a batch of its own).
      sparse_above_ao: ``predict_hamiltonian`` returns a CSR matrix for structures with more
        AOs than this (:data:`SPARSE_ABOVE_AO`), a dense array otherwise.
      dense_limit_ao: the most AOs of any dense matrix (dense H, initial guess, orbital
        energies): above it those raise a ValueError naming the fix instead of running out
        of memory (:data:`DENSE_LIMIT_AO`, sized for a 24 GiB machine; raise it on a larger
        one, about ``sqrt(free bytes / 64)``).
    """

    def __init__(self, loaded: ckpt_lib.LoadedModel, max_molecules: int = 16,
                 max_edges: int = 16384, sparse_above_ao: int = SPARSE_ABOVE_AO,
                 dense_limit_ao: int = DENSE_LIMIT_AO):
        if int(sparse_above_ao) > int(dense_limit_ao):
            raise ValueError(f"sparse_above_ao={sparse_above_ao} is above dense_limit_ao="
                             f"{dense_limit_ao}: structures in between would get a dense H "
                             "they are not allowed; set sparse_above_ao <= dense_limit_ao.")
        self.sparse_above_ao, self.dense_limit_ao = int(sparse_above_ao), int(dense_limit_ao)
        self.config, self.template, self.stats = loaded.config, loaded.template, loaded.stats
        self.step = loaded.step
        self.dtype = np.dtype(self.config.model.dtype)
        if self.dtype == np.float64 and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        self.spec = GraphSpec(self.template, cutoff=float(self.config.model.cutoff),
                              reduced_nodes=bool(self.config.heads.reduced_nodes),
                              charge_spin_embedding=bool(
                                  self.config.model.charge_spin_embedding))
        self.model = helm.build_model(self.config, self.template, self.stats)
        self.params = jax.device_put(loaded.params)
        self.max_molecules, self.max_edges = int(max_molecules), int(max_edges)
        self.num_compilations = 0
        model = self.model
        self._hamiltonian = self._jit(lambda p, g: model.apply(
            {"params": p}, **helm.batch_inputs(g), hamiltonian=True, energy=False))
        self._energy_forces = self._jit(
            lambda p, g: helm.energy_and_forces(model, p, helm.batch_inputs(g)))

    @classmethod
    def from_checkpoint(cls, path: str, which: str = "best", **kw) -> "Predictor":
        """Loads a workdir or checkpoint directory (see :func:`checkpoint.load_model`)."""
        return cls(ckpt_lib.load_model(path, which=which), **kw)

    @property
    def has_energy_head(self) -> bool:
        """Whether the checkpoint's run trained the energy head (energy or force loss)."""
        return any(float(self.config.losses.get(k, 0.0)) for k in ("energy", "forces"))

    def _jit(self, fn: Callable) -> Callable:
        def counted(params, graph):
            self.num_compilations += 1  # runs once per trace, i.e. per new padded shape
            return fn(params, graph)
        return jax.jit(counted)

    # -- batching -------------------------------------------------------------------------

    def graphs(self, records: Sequence[Record]) -> list[MolGraph]:
        """Label-free graphs of the records (elements and geometry checked)."""
        return [build_graph(r, self.spec, with_labels=False) for r in records]

    def batches(self, graphs: Sequence[MolGraph]) -> Iterator[tuple[list[int], Any]]:
        """Yields ``(indices into graphs, padded batch)`` for all graphs.

        A molecule's size class is ``(c_n, c_e)``, its atom and edge counts rounded up to
        powers of two. Molecules of one class share batches of budget
        ``(k c_n + 1, k c_e, k + 1)`` with ``k = 1`` for a lone molecule (MD, optimisation)
        and otherwise ``k = k_max``, the largest power of two ``<= max_molecules`` and
        ``<= max_edges / c_e`` (at least 1). So there are at most two padded shapes per size
        class, whatever the molecules: compilation (seconds to minutes for a large model)
        happens once per shape, and padding costs at most one partly empty batch per class.
        A lone structure with more than :data:`FINE_BUCKETS_ABOVE_EDGES` edges is padded
        to within 12.5 % instead (:func:`helm_jax.graph_parallel.bucket`): its compile is
        amortised, and a power of two could double its time.
        """
        classes: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(graphs):
            key = (_pow2(g.n_node, MIN_NODES), _pow2(g.n_edge, MIN_EDGES))
            classes.setdefault(key, []).append(i)
        for (c_n, c_e), members in sorted(classes.items()):
            k_max = max(1, min(self.max_molecules, self.max_edges // c_e))
            k_max = 1 << (k_max.bit_length() - 1)  # a power of two
            for start in range(0, len(members), k_max):
                idx = members[start:start + k_max]
                k = 1 if len(idx) == 1 else k_max
                budget = batching.Budget(n_node=k * c_n + 1, n_edge=k * c_e, n_graph=k + 1)
                if k == 1 and c_e > FINE_BUCKETS_ABOVE_EDGES:  # large: pad <= 12.5 %, not 2x
                    g = graphs[idx[0]]
                    budget = batching.Budget(n_node=graph_parallel.bucket(g.n_node) + 1,
                                             n_edge=graph_parallel.bucket(g.n_edge), n_graph=2)
                yield idx, batching.pad_batch([graphs[i] for i in idx], budget, None, None,
                                              self.dtype)

    # -- predictions ----------------------------------------------------------------------

    def _records(self, x) -> tuple[bool, list[Record]]:
        single = not isinstance(x, (list, tuple))
        return single, [to_record(m, self.template) for m in ([x] if single else x)]

    @property
    def spin_resolved(self) -> bool:
        """Whether the model predicts alpha and beta blocks (``config.heads.spin``)."""
        return self.model.spin_resolved

    def _check_open_shell(self, records: Sequence[Record]) -> None:
        """Refuses open shells (2S != 0) for a model that cannot predict their two spins."""
        open_shell = [r for r in records if int(r.spin) != 0]
        if not open_shell:
            return
        r = open_shell[0]
        missing = [flag for flag, ok in (
            ("--config.heads.spin=sum_diff (or alpha_beta)", self.spin_resolved),
            ("--config.model.charge_spin_embedding=True",
             bool(self.config.model.charge_spin_embedding))) if not ok]
        if missing:
            name = f"Molecule {r.key!r}" if r.key else "A molecule"
            raise ValueError(
                f"{name} is open shell (2S={r.spin}, charge {r.charge}), but this "
                f"checkpoint's model was trained without {' and '.join(missing)}: it predicts "
                "one restricted, closed-shell H. Use a checkpoint trained with those flags on "
                "spin-resolved (unrestricted) labels.")

    def n_ao(self, x) -> int:
        """Number of AOs of a structure (``ase.Atoms``, Mole or Record) in the checkpoint's
        basis."""
        r = to_record(x, self.template)
        return basis_lib.molecule_n_ao(r.elements, self.template.basis,
                                       self.template.ecp or None)

    def check_dense(self, n_ao: int, what: str = "A dense H") -> None:
        """Raises ValueError if ``n_ao`` exceeds :attr:`dense_limit_ao`.

        The message names the limit, the memory a dense matrix would need and the fixes.
        """
        if n_ao <= self.dense_limit_ao:
            return
        gib = 8.0 * n_ao * n_ao / 2 ** 30
        raise ValueError(
            f"{what} of {n_ao} AOs needs {n_ao}x{n_ao} dense float64 matrices ({gib:.1f} GiB "
            f"each, about 8 of them at the peak of an initial guess), above this predictor's "
            f"dense limit of {self.dense_limit_ao} AOs (Predictor(dense_limit_ao=...), default "
            f"{DENSE_LIMIT_AO} for a 24 GiB machine). Use the block-sparse H instead: "
            "predictor.predict_hamiltonian(x) returns a scipy.sparse CSR matrix above "
            f"{self.sparse_above_ao} AOs (or pass sparse=True), for sparse or iterative "
            "solvers; or, on a machine with more memory, raise dense_limit_ao to about "
            "sqrt(free bytes / 64).")

    def _sparse_choice(self, n_ao: int, sparse: bool | None) -> bool:
        """Whether a structure of ``n_ao`` AOs gets a CSR H (``sparse`` None: automatic)."""
        if sparse is None:
            return n_ao > self.sparse_above_ao
        if not sparse:
            self.check_dense(n_ao, "A dense H (sparse=False)")
        return bool(sparse)

    def predict_hamiltonian(self, x, sparse: bool | None = None) -> Any:
        """Predicted H (Eh, PySCF AO order of the checkpoint's basis, symmetrised).

        Args:
          x: an ``ase.Atoms``, built ``pyscf.gto.Mole`` or Record, or a list of them.
          sparse: None (default): a block-sparse ``scipy.sparse.csr_matrix`` for structures
            of more than :attr:`sparse_above_ao` AOs, a dense array otherwise; True: CSR for
            every structure; False: dense for every structure (refused above
            :attr:`dense_limit_ao`). Both forms hold the same numbers: the CSR matrix stores
            the blocks of the atom pairs within the cutoff (the dense one is 0 elsewhere).

        Returns:
          Dense: ``[n_ao, n_ao]`` float64 for a closed shell (2S = 0), ``[2, n_ao, n_ao]``
          (alpha, beta) for an open shell (a spin-resolved model only). Sparse: one
          ``csr_matrix`` ``[n_ao, n_ao]`` for a closed shell, a tuple ``(alpha, beta)`` of
          them for an open shell. A list of them for a list input.

        Raises:
          ValueError: an open-shell molecule for a model that is not spin-resolved, or
            ``sparse=False`` for a structure above :attr:`dense_limit_ao`.
        """
        single, records = self._records(x)
        self._check_open_shell(records)
        want = [self._sparse_choice(self.n_ao(r), sparse) for r in records]
        out: list[Any] = [None] * len(records)
        layouts = (self.spec.node_layout, self.spec.edge_layout, self.stats)
        for idx, batch in self.batches(self.graphs(records)):
            pred = jax.device_get(self._hamiltonian(self.params, batch))
            open_shell = [int(records[i].spin) != 0 for i in idx]
            if not any(want[i] for i in idx):
                fulls = assemble.batch_to_full(pred, batch, *layouts)
                betas = (assemble.batch_to_full(pred, batch, *layouts, spin="beta")
                         if self.spin_resolved and any(open_shell) else fulls)
                for i, h, hb in zip(idx, fulls, betas):
                    out[i] = h if int(records[i].spin) == 0 else np.stack([h, hb])
                continue
            # A batch with a sparse structure: every one assembled block-sparse (never a
            # dense matrix of the large one); dense ones are converted (the same numbers).
            alphas = sparse_lib.batch_to_sparse(pred, batch, *layouts)
            betas = (sparse_lib.batch_to_sparse(pred, batch, *layouts, spin="beta",
                                                select=open_shell)
                     if any(open_shell) else alphas)
            for i, h, hb, is_open in zip(idx, alphas, betas, open_shell):
                if want[i]:
                    out[i] = (h, hb) if is_open else h
                else:
                    out[i] = np.stack([h.toarray(), hb.toarray()]) if is_open else h.toarray()
        return out[0] if single else out

    def initial_guess(self, mol) -> np.ndarray:
        """Density of the predicted H for ``mf.kernel(dm0=)``.

        Closed shells (``mol.spin == 0``): ``2 C_occ C_occ^T`` ``[n_ao, n_ao]``. Open shells
        (a spin-resolved model): the UKS/UHF density ``[2, n_ao, n_ao]``, the ``n_alpha``
        lowest orbitals of the alpha H and the ``n_beta`` lowest of the beta H
        (``mol.nelec``).

        Args:
          mol: a built PySCF Mole in the checkpoint's basis.

        Returns:
          The density matrix (orbitals with the Mole's overlap).

        Raises:
          ValueError: the Mole has more than :attr:`dense_limit_ao` AOs (the dense
            eigen-solution would not fit in memory; the message names the fixes).
        """
        self.check_dense(int(mol.nao), "An initial guess (dense H, S and eigenvectors)")
        h = self.predict_hamiltonian(mol, sparse=False)
        s = mol.intor_symmetric("int1e_ovlp")
        if mol.spin == 0:
            _, c = pyscf_metrics.orbitals(h, s)
            return pyscf_metrics.density_matrix(c, mol.nelectron // 2)
        # density_matrix is the doubly occupied 2 C C^T; one spin's is half of it.
        return np.stack([pyscf_metrics.density_matrix(pyscf_metrics.orbitals(h[k], s)[1],
                                                      int(mol.nelec[k])) / 2.0
                         for k in range(2)])

    def energy_and_forces(self, x) -> tuple[Any, Any]:
        """Total energy (eV) and forces (eV/A) from the energy head.

        The total energy is the model's output plus the per-element reference of the
        checkpoint's statistics.

        Args:
          x: an ``ase.Atoms``, Mole or Record, or a list of them.

        Returns:
          ``(energy, forces [n_atoms, 3])``, or lists of them for a list input.
        """
        single, records = self._records(x)
        energies: list[float | None] = [None] * len(records)
        forces: list[np.ndarray | None] = [None] * len(records)
        graphs = self.graphs(records)
        for idx, batch in self.batches(graphs):
            e, f = jax.device_get(self._energy_forces(self.params, batch))
            start = 0
            for k, i in enumerate(idx):
                n = graphs[i].n_node
                ref = self.stats.reference_energy(graphs[i].species)
                energies[i] = (float(e[k]) + ref) * HARTREE_EV
                forces[i] = np.asarray(f[start:start + n], np.float64) * HARTREE_EV
                start += n
        return (energies[0], forces[0]) if single else (energies, forces)


def write_predictions(predictor: Predictor, geometries: str, out: str) -> int:
    """Predicts every frame of an xyz / ASE db file into a project HDF5 file.

    Each group holds the predicted ``fock`` (H), the PySCF ``overlap``, the
    ``mo_energy`` [n_ao] (Eh, ascending) of ``H C = S C e``, and, when the checkpoint trained
    its energy head, the predicted ``energy`` (Eh, NaN otherwise) and ``forces`` (Eh/A).
    An open-shell frame (a spin-resolved model) stores the alpha H as ``fock`` and the beta
    H as ``fock_beta``, with ``mo_energy`` of the alpha and ``mo_energy_beta`` of the beta H.
    A structure above ``predictor.sparse_above_ao`` AOs stores its H block-sparse
    (``fock_csr``, ``fock_beta_csr``: :mod:`helm_jax.data.h5format`); one above
    ``predictor.dense_limit_ao`` AOs has no ``overlap`` and no ``mo_energy`` (both need dense
    ``n_ao x n_ao`` matrices). The file is written to a temporary name and renamed when
    complete.

    Args:
      predictor: the model.
      geometries: input file (frame charge/spin as in ``helm_jax.data.geometry``).
      out: output ``.h5`` path.

    Returns:
      Number of structures written.
    """
    template = predictor.template
    structures = geometry.read_structures(geometries)
    moles = [geometry.build_mole(s, template.basis, template.ecp) for s in structures]
    hamiltonians = predictor.predict_hamiltonian(moles)
    energies, forces = (predictor.energy_and_forces(moles) if predictor.has_energy_head
                        else ([np.nan] * len(moles), [None] * len(moles)))
    tmp = f"{out}.tmp.{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        h5format.write_file_attrs(f, {
            "method": "helm_jax prediction", "basis": template.basis, "ecp": template.ecp,
            "checkpoint_step": predictor.step, "input_file": os.path.basename(geometries)})
        for i, (s, mol, h) in enumerate(zip(structures, moles, hamiltonians)):
            dense_ok = mol.nao <= predictor.dense_limit_ao
            overlap = mol.intor_symmetric("int1e_ovlp") if dense_ok else None
            key = h5format.group_key(i)
            if isinstance(h, tuple) or (not sp.issparse(h) and h.ndim == 3):
                h_alpha, h_beta = h[0], h[1]  # open shell: (alpha, beta) CSR or [2, N, N]
            else:
                h_alpha, h_beta = h, None
            h5format.write_structure(
                f, key, elements=s.elements, coords=s.coords, fock=h_alpha, overlap=overlap,
                energy=energies[i] / HARTREE_EV,
                forces=None if forces[i] is None else forces[i] / HARTREE_EV,
                charge=s.charge, spin=s.spin, n_electrons=mol.nelectron, converged=True,
                scf_cycles=0, source=s.source, fock_beta=h_beta)
            if not dense_ok:
                continue
            for name, hs in (("mo_energy", h_alpha), ("mo_energy_beta", h_beta)):
                if hs is not None:
                    dense = hs.toarray() if sp.issparse(hs) else hs
                    f[key].create_dataset(name, data=pyscf_metrics.orbitals(dense, overlap)[0])
    os.replace(tmp, out)
    return len(structures)
