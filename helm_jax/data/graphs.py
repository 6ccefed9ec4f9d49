"""Molecular graphs with Hamiltonian block labels as irreps.

A :class:`MolGraph` is one molecule ready for batching (numpy, host side): directed edges
between all atom pairs closer than the cutoff (fully connected below it), and, when the
record carries a Fock matrix, its node and edge blocks as irreps
(:class:`helm_jax.blocks.IrrepsLayout`). Validity masks are not stored: they follow from
the atomic numbers (:func:`label_masks`), so batches stay small.

With ``GraphSpec.qm_targets`` set, a graph also carries :class:`QMLabels`: what the
differentiable quantum-chemistry losses (:mod:`helm_jax.orbitals`) need to assemble the predicted
full H inside the jitted step and compare its orbital energies, dipole and polarisability
with reference targets (see :mod:`helm_jax.data.reference_targets`).

Periodic structures (docs/periodic.md, "The model on periodic structures"): with
``GraphSpec.periodic`` a record with a cell becomes a graph whose directed edges are the
triples ``(i, j, T)`` of :func:`helm_jax.data.periodic.image_pairs` (atom i in the home cell,
atom j in the cell shifted by the integer translation T; an atom's own images are edges
too); each edge carries its translation and Cartesian shift ``T @ cell`` (the edge vector
is ``r_j + T @ cell - r_i``), and its label is the stored block ``H_ij(T)`` when the labels
have that pair (``edge_label_mask``). With ``GraphSpec.bands`` a graph also carries
:class:`KSpaceLabels`: the k-mesh, S(k) and the band energies the band losses compare with.

Open shells (docs/model_and_training.md, "Open shells"): every graph carries its total
charge and 2S; with ``GraphSpec.spin_resolved`` the beta Fock matrix of unrestricted labels
becomes ``node_labels_beta`` / ``edge_labels_beta`` (None for restricted labels, whose beta
blocks equal the alpha ones).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from helm_jax import basis as basis_lib
from helm_jax import blocks, orbitals, units
from helm_jax.data import geometry
from helm_jax.data import periodic as periodic_lib
from helm_jax.data.records import PeriodicLabels, Record

QM_TARGETS = ("", "reference", "large_basis")
#: Total charges and spins 2S the charge/spin embedding covers (``config.model.
#: charge_spin_embedding``): charges ``-MAX_CHARGE..MAX_CHARGE``, 2S ``0..MAX_SPIN``.
MAX_CHARGE = 10
MAX_SPIN = 10


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """How records become graphs.

    Attributes:
      template: the padded block template (basis of the dataset).
      cutoff: graph cutoff radius in Angstrom.
      reduced_nodes: store node labels in the reduced (unique-value) layout.
      qm_targets: attach :class:`QMLabels` with the same-basis reference targets
        (``"reference"``), the larger basis's ``targets_*`` (``"large_basis"``), or none
        (``""``).
      qm_polarizability_ff: use the self-consistent finite-field polarisability
        (``*polarizability_ff``) as the target instead of the non-self-consistent one.
      spin_resolved: keep the beta labels of unrestricted records (``Record.fock_beta``) as
        ``MolGraph.node_labels_beta`` / ``edge_labels_beta`` (a model with
        ``config.heads.spin`` other than "none"). False: records with beta labels are
        refused (a restricted model cannot learn them), naming the flag to set.
      periodic: build periodic graphs from records with a cell (edges to every periodic
        image within the cutoff); False refuses periodic records, naming this flag.
      bands: attach :class:`KSpaceLabels` (band targets on the labels' k-mesh) to periodic
        graphs (``config.losses`` with a band loss).
      conduction_bands: conduction bands above the occupied ones in the band targets.
      fermi_reference: learn ``H(T) - mu S(T)`` of periodic labels instead of raw H(T)
        (:func:`fermi_referenced`; bands then relative to the labels' Fermi level).
      charge_spin_embedding: whether the model reads each graph's charge and spin
        (``config.model.charge_spin_embedding``). True: both must lie in the embedding's
        range (:data:`MAX_CHARGE`, :data:`MAX_SPIN`); False: open-shell records
        (``spin != 0``) are refused, since the model could not tell them from closed
        shells; None (default): not checked (label-free graphs, tools).
    """

    template: basis_lib.Template
    cutoff: float
    reduced_nodes: bool = True
    qm_targets: str = ""
    qm_polarizability_ff: bool = False
    spin_resolved: bool = False
    charge_spin_embedding: bool | None = None
    periodic: bool = False
    bands: bool = False
    conduction_bands: int = 2
    fermi_reference: bool = False

    def __post_init__(self):
        if self.qm_targets not in QM_TARGETS:
            raise ValueError(f"qm_targets={self.qm_targets!r}: choose one of {QM_TARGETS}.")

    @property
    def node_layout(self) -> blocks.IrrepsLayout:
        """Irreps layout of node (diagonal-block) labels (:func:`layouts_for`)."""
        return layouts_for(self.template, self.reduced_nodes)[0]

    @property
    def edge_layout(self) -> blocks.IrrepsLayout:
        """Irreps layout of directed-edge (off-diagonal block) labels (:func:`layouts_for`)."""
        return layouts_for(self.template, self.reduced_nodes)[1]


def layouts_for(template: basis_lib.Template, reduced_nodes: bool
                ) -> tuple[blocks.IrrepsLayout, blocks.IrrepsLayout]:
    """``(node_layout, edge_layout)``: the label irreps of a template's blocks.

    Nodes (diagonal blocks, symmetric) use the reduced layout of unique values if
    ``reduced_nodes``, else the full one; directed edges (off-diagonal blocks) always the full
    one (HELM paper, Hamiltonian head). The data labels (:class:`GraphSpec`) and the model's
    output irreps (:func:`helm_jax.model.helm.build_model`) both come from here.
    """
    return (blocks.irreps_layout(template, reduced=reduced_nodes),
            blocks.irreps_layout(template, reduced=False))


@dataclasses.dataclass(frozen=True)
class QMLabels:
    """One molecule's inputs and targets of the quantum-chemistry losses (host numpy).

    Attributes:
      ao_index: int64 ``[N, N]`` position of each full-matrix entry in
        ``concat(node_blocks.ravel(), edge_blocks.ravel())`` of this molecule
        (:func:`helm_jax.blocks.full_indices`; -1 for atom pairs beyond the cutoff).
      block_size: entries per padded block, ``A * A`` (to offset ``ao_index`` in a batch).
      overlap: ``[N, N]`` AO overlap.
      ao_dipole: ``[3, N, N]`` AO dipole integrals (bohr) about the origin O.
      nuclear_dipole: ``[3]`` ``sum_A Z_A (R_A - O)`` (au; ECP cores removed from Z).
      n_alpha, n_beta: occupied orbitals of each spin, ``(n_electrons +- 2S) / 2`` (PySCF's
        ``mol.nelec``); equal (:attr:`n_occ`) for a closed shell.
      mo_energy: ``[K]`` target orbital energies (Eh, ascending) of the alpha spin (of both
        for restricted targets), or None.
      dipole: ``[3]`` target dipole (au, total density), or None.
      polarizability: ``[3, 3]`` target polarisability (au, total density), or None.
      mo_energy_beta: ``[K]`` target orbital energies of the beta spin: row 1 of unrestricted
        targets, ``mo_energy`` itself for restricted ones; None with ``mo_energy``.
    """

    ao_index: np.ndarray
    block_size: int
    overlap: np.ndarray
    ao_dipole: np.ndarray
    nuclear_dipole: np.ndarray
    n_alpha: int
    n_beta: int
    mo_energy: np.ndarray | None
    dipole: np.ndarray | None
    polarizability: np.ndarray | None
    mo_energy_beta: np.ndarray | None = None

    @property
    def n_ao(self) -> int:
        """Number of AOs."""
        return int(self.overlap.shape[0])

    @property
    def open_shell(self) -> bool:
        """Whether the spins have different occupations (2S != 0)."""
        return self.n_alpha != self.n_beta

    @property
    def n_occ(self) -> int:
        """Doubly occupied orbitals of a closed shell (``n_alpha = n_beta``).

        Raises:
          ValueError: an open shell, which has ``n_alpha`` and ``n_beta`` instead.
        """
        if self.open_shell:
            raise ValueError(f"An open shell (n_alpha={self.n_alpha}, n_beta={self.n_beta}) "
                             "has no doubly occupied orbital count: use n_alpha and n_beta.")
        return self.n_alpha


@dataclasses.dataclass(frozen=True)
class KSpaceLabels:
    """One periodic structure's band targets on the k-mesh of its labels (host numpy).

    The labels of a k-point SCF reproduce its F(k) and S(k) on the mesh exactly
    (docs/periodic.md), so these are the SCF's own bands.

    Attributes:
      kpts: ``[K, 3]`` fractional k-points (the labels' Gamma-centred mesh).
      overlap: complex ``[K, n, n]`` S(k).
      bands: ``[K, n]`` band energies (Eh, ascending; overlap directions dropped by the
        linear-dependence guard are NaN at the end).
      n_occ: occupied bands (valence electrons / 2).
      band_count: bands the band losses compare (``n_occ`` plus the conduction bands asked
        for, at most the bands every k-point has).
      gap: indirect gap over the mesh (Eh; lowest conduction minus highest valence band),
        or None for metals (labels with smearing, no stored gap).
    """

    kpts: np.ndarray
    overlap: np.ndarray
    bands: np.ndarray
    n_occ: int
    band_count: int
    gap: float | None

    @property
    def n_ao(self) -> int:
        """AOs of the cell."""
        return int(self.overlap.shape[-1])


@dataclasses.dataclass(frozen=True)
class MolGraph:
    """One molecule as a graph (host numpy arrays).

    Attributes:
      species: int32 ``[n]`` atomic numbers.
      positions: float64 ``[n, 3]`` Angstrom.
      senders, receivers: int32 ``[E]``; edge e is the directed pair
        ``senders[e] -> receivers[e]`` and carries block ``H[senders[e], receivers[e]]``.
      node_labels: ``[n, D_node]`` irreps of the diagonal blocks, or None.
      edge_labels: ``[E, D_edge]`` irreps of the off-diagonal blocks, or None.
      energy: total energy (Eh) or NaN.
      forces: ``[n, 3]`` Eh/Angstrom, or None.
      key: source record key.
      qm: quantum-chemistry inputs and targets (only with ``GraphSpec.qm_targets``).
      charge: total charge.
      spin: 2S = n_alpha - n_beta.
      node_labels_beta, edge_labels_beta: irreps of the beta Fock matrix's blocks (same
        layouts) for unrestricted labels with ``GraphSpec.spin_resolved``; None for
        restricted labels (beta = alpha).
      cell, pbc: ``[3, 3]`` lattice (rows, Angstrom) and ``[3]`` periodic axes of a periodic
        graph; None for molecules.
      translations: int32 ``[E, 3]`` each edge's lattice translation T (periodic graphs).
      shifts: float64 ``[E, 3]`` each edge's Cartesian shift ``T @ cell`` (Angstrom): the
        edge vector is ``positions[receivers] + shifts - positions[senders]``.
      edge_label_mask: bool ``[E]``, which edges have a label (periodic graphs: the labels
        store that ``(i, j, T)``); None: every edge (molecules).
      kspace: band targets (:class:`KSpaceLabels`, ``GraphSpec.bands``), or None.
    """

    species: np.ndarray
    positions: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    node_labels: np.ndarray | None
    edge_labels: np.ndarray | None
    energy: float
    forces: np.ndarray | None
    key: str = ""
    qm: QMLabels | None = None
    charge: int = 0
    spin: int = 0
    node_labels_beta: np.ndarray | None = None
    edge_labels_beta: np.ndarray | None = None
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    translations: np.ndarray | None = None
    shifts: np.ndarray | None = None
    edge_label_mask: np.ndarray | None = None
    kspace: KSpaceLabels | None = None

    @property
    def is_periodic(self) -> bool:
        """Whether the graph has periodic edges."""
        return self.shifts is not None

    def labelled_edges(self) -> np.ndarray:
        """bool ``[E]``: the edges with a Hamiltonian label (all of a molecule's)."""
        if self.edge_label_mask is None:
            return np.ones(self.n_edge, bool)
        return self.edge_label_mask

    @property
    def n_node(self) -> int:
        """Number of atoms."""
        return int(len(self.species))

    @property
    def n_edge(self) -> int:
        """Number of directed edges."""
        return int(len(self.senders))


def radius_edges(coords: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``i != j`` closer than ``cutoff`` (row-major order).

    The edge set and order are those of the dense rule ``np.nonzero(d < cutoff)`` of the
    distance matrix ``d`` without its diagonal (sorted by sender, then receiver), found with
    a k-d tree (:func:`helm_jax.data.geometry.close_pairs`): O(n * neighbours) time and
    memory (docs/using_a_checkpoint.md, "Sparse Hamiltonians", for 10,000 atoms).

    Returns:
      ``(senders [E], receivers [E])`` int32.
    """
    i, j, _ = geometry.close_pairs(coords, cutoff)
    s, r = np.concatenate([i, j]), np.concatenate([j, i])
    order = np.lexsort((r, s))
    return s[order].astype(np.int32), r[order].astype(np.int32)


def build_graph(record: Record, spec: GraphSpec, with_labels: bool = True,
                validate: bool = True) -> MolGraph:
    """Converts a record to a graph with irreps labels.

    Args:
      record: the structure (PySCF AO order for ``spec.template``'s basis).
      spec: template, cutoff and label layout.
      with_labels: convert the Fock matrix to block irreps (if the record has one).
      validate: check the geometry (:func:`helm_jax.data.geometry.check_geometry`); False
        for records a reader yielded, which it validated already.

    Returns:
      The :class:`MolGraph`.

    Raises:
      ValueError: bad geometry, an element outside the template, a Fock matrix whose size
        does not fit the basis, or a charge / spin / spin-resolved label the spec refuses
        (:class:`GraphSpec`).
    """
    if record.cell is not None or record.periodic is not None:
        if not spec.periodic:
            raise ValueError(
                f"Record {record.key!r} is periodic (a cell and real-space H(T) blocks) but "
                "the graphs are molecular: set --config.data.periodic=True (experiments/"
                "periodic.py does; docs/periodic.md).")
        return build_periodic_graph(record, spec, with_labels, validate)
    if validate:
        z, coords = geometry.check_geometry(record.elements, record.coords, record.key)
    else:
        z = np.asarray(record.elements, np.int32)
        coords = np.asarray(record.coords, np.float64)
    for zi in set(z.tolist()):
        spec.template.element(zi)  # clear error for an element outside the template
    check_charge_spin(record, spec, with_labels)
    senders, receivers = radius_edges(coords, spec.cutoff)
    node_labels = edge_labels = node_labels_beta = edge_labels_beta = None

    def irreps(fock):
        node_b, edge_b = blocks.full_to_blocks(np.asarray(fock, np.float64), z,
                                               spec.template, senders, receivers)
        return spec.node_layout.blocks_to_irreps(node_b), spec.edge_layout.blocks_to_irreps(
            edge_b)

    if with_labels and record.fock is not None:
        node_labels, edge_labels = irreps(record.fock)
        if record.fock_beta is not None:
            node_labels_beta, edge_labels_beta = irreps(record.fock_beta)
    energy = np.nan if record.energy is None else float(record.energy)
    forces = None if record.forces is None else np.asarray(record.forces, np.float64)
    qm = qm_labels(record, spec, senders, receivers) if spec.qm_targets else None
    return MolGraph(species=z, positions=coords, senders=senders, receivers=receivers,
                    node_labels=node_labels, edge_labels=edge_labels, energy=energy,
                    forces=forces, key=record.key, qm=qm, charge=int(record.charge),
                    spin=int(record.spin), node_labels_beta=node_labels_beta,
                    edge_labels_beta=edge_labels_beta)


def build_periodic_graph(record: Record, spec: GraphSpec, with_labels: bool = True,
                         validate: bool = True) -> MolGraph:
    """:func:`build_graph` of a periodic record: edges ``(i, j, T)`` to every image within
    the cutoff, labels looked up among the stored pairs (docs/periodic.md).

    Raises:
      ValueError: bad structure, an element outside the template, open-shell or charged
        cells (not labelled or modelled yet), or label blocks that do not fit the basis.
    """
    if record.cell is None or record.pbc is None:
        raise ValueError(f"Record {record.key!r} has periodic labels but no cell and pbc.")
    if validate:
        z, coords, cell, pbc = geometry.check_periodic(record.elements, record.coords,
                                                       record.cell, record.pbc, record.key)
    else:
        z = np.asarray(record.elements, np.int32)
        coords = np.asarray(record.coords, np.float64)
        cell, pbc = periodic_lib.as_cell(record.cell, record.pbc)
    for zi in set(z.tolist()):
        spec.template.element(zi)
    if int(record.spin) != 0 or int(record.charge) != 0:
        raise ValueError(f"Record {record.key!r}: charged or open-shell cells (charge "
                         f"{record.charge}, 2S={record.spin}) are not supported yet.")
    if spec.fermi_reference and record.periodic is not None:
        record = fermi_referenced(record)
    pairs = periodic_lib.image_pairs(coords, cell, pbc, spec.cutoff)
    senders, receivers = pairs.i.astype(np.int32), pairs.j.astype(np.int32)
    translations = pairs.translation.astype(np.int32)
    node_labels = edge_labels = label_mask = kspace = None
    labels = record.periodic
    if with_labels and labels is not None:
        node_b, edge_b, label_mask = periodic_blocks(labels, z, spec.template, senders,
                                                     receivers, translations)
        node_labels = spec.node_layout.blocks_to_irreps(node_b)
        edge_labels = spec.edge_layout.blocks_to_irreps(edge_b)
        if spec.bands:
            kspace = kspace_labels(labels, spec.conduction_bands, record.key)
    energy = np.nan if record.energy is None else float(record.energy)
    forces = None if record.forces is None else np.asarray(record.forces, np.float64)
    return MolGraph(species=z, positions=coords, senders=senders, receivers=receivers,
                    node_labels=node_labels, edge_labels=edge_labels, energy=energy,
                    forces=forces, key=record.key, cell=cell, pbc=pbc,
                    translations=translations,
                    shifts=translations.astype(np.float64) @ cell,
                    edge_label_mask=label_mask, kspace=kspace)


def fermi_referenced(record: Record) -> Record:
    """The record with its periodic labels referenced to their Fermi level mu: blocks
    ``H(T) - mu S(T)`` (``PeriodicLabels.fock_minus_mu_s``), and the Fermi level, HOMO,
    LUMO and path bands shifted by ``-mu``, so every band is relative to the Fermi level
    (docs/periodic.md, the HELM reference's convention for comparing structures).

    Raises:
      ValueError: labels without a Fermi level or overlap blocks.
    """
    labels = record.periodic
    mu = labels.fermi
    if mu is None or labels.overlap_blocks is None:
        raise ValueError(f"Record {record.key!r}: a Fermi reference needs labels with a Fermi "
                         "level and overlap blocks (data_prep/label.py --kmesh=...)")
    shift = lambda x: None if x is None else x - mu  # noqa: E731
    return dataclasses.replace(record, periodic=dataclasses.replace(
        labels, fock_blocks=labels.fock_minus_mu_s(), fermi=0.0, homo=shift(labels.homo),
        lumo=shift(labels.lumo), path_bands=shift(labels.path_bands)))


def periodic_blocks(labels: PeriodicLabels, z: np.ndarray, template: basis_lib.Template,
                    senders: np.ndarray, receivers: np.ndarray, translations: np.ndarray,
                    which: str = "fock") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded template blocks of a periodic graph's nodes and edges from stored pairs.

    Node i gets the on-site block ``(i, i, 0)``; edge ``(i, j, T)`` the stored block of that
    triple times its Bloch weight (``1 / multiplicity`` of tied minimum images, so that the
    labelled edges Bloch-sum to the labels' H(k)), or zeros and ``False`` in the mask when the
    labels do not store it (beyond the k-mesh's minimum-image reach).

    Returns:
      ``(node_blocks [n, A, A], edge_blocks [E, A, A], edge_label_mask bool [E])``.

    Raises:
      ValueError: an atom without an on-site block, or blocks whose size does not fit the
        template's basis of the element.
    """
    a = template.n_ao
    amap = {int(zi): template.ao_map(int(zi)) for zi in set(z.tolist())}
    index = labels.pair_index()

    def padded(p, i, j):
        mi, mj = amap[int(z[i])], amap[int(z[j])]
        block = labels.block(p, which)
        if block.shape != (len(mi), len(mj)):
            raise ValueError(f"pair ({i}, {j}) block {list(block.shape)} does not fit the "
                             f"template basis ({len(mi)} x {len(mj)} AOs): wrong basis")
        out = np.zeros((a, a))
        out[np.ix_(mi, mj)] = block * labels.weight[p]
        return out

    nodes = np.zeros((len(z), a, a))
    for i in range(len(z)):
        p = index.get((i, i, 0, 0, 0))
        if p is None:
            raise ValueError(f"atom {i} has no on-site block (i, i, T=0) in the labels")
        nodes[i] = padded(p, i, i)
    edges = np.zeros((len(senders), a, a))
    mask = np.zeros(len(senders), bool)
    for e, (i, j, t) in enumerate(zip(senders, receivers, translations)):
        p = index.get((int(i), int(j), *map(int, t)))
        if p is not None:
            edges[e], mask[e] = padded(p, i, j), True
    return nodes, edges, mask


def kspace_labels(labels: PeriodicLabels, conduction_bands: int, key: str = ""
                  ) -> KSpaceLabels:
    """The band targets of periodic labels on their own k-mesh (:class:`KSpaceLabels`).

    Raises:
      ValueError: labels without a k-mesh, overlap blocks or electron count.
    """
    if labels.kmesh is None or labels.overlap_blocks is None:
        raise ValueError(f"Record {key!r}: band targets need labels from a k-point SCF with "
                         "overlap blocks (data_prep/label.py --kmesh=...)")
    if labels.n_electrons is None:
        raise ValueError(f"Record {key!r}: the labels do not say how many electrons the cell "
                         "has; relabel it with data_prep/label.py")
    kpts = periodic_lib.mp_kpts(labels.kmesh)
    s_k = periodic_lib.labels_to_k(labels, kpts, "overlap")
    bands = periodic_lib.bands(periodic_lib.labels_to_k(labels, kpts, "fock"), s_k,
                               orbitals.S_THRESHOLD)
    n_occ = int(labels.n_electrons) // 2
    available = int(np.min(np.sum(np.isfinite(bands), axis=1)))
    count = min(n_occ + int(conduction_bands), available)
    gap = None
    if labels.gap is not None and n_occ < available:
        gap = float(np.min(bands[:, n_occ]) - np.max(bands[:, n_occ - 1]))
    return KSpaceLabels(kpts=kpts, overlap=s_k, bands=bands, n_occ=n_occ, band_count=count,
                        gap=gap)


def check_charge_spin(record: Record, spec: GraphSpec, with_labels: bool = True) -> None:
    """Refuses what the model of ``spec`` cannot represent, with the flag that fixes it.

    Raises:
      ValueError: spin-resolved labels without ``spec.spin_resolved``; an open shell for a
        model without the charge/spin embedding; a charge or spin outside the embedding's
        range.
    """
    name = record.key or "<record>"
    if with_labels and record.fock is not None and record.fock_beta is not None \
            and not spec.spin_resolved:
        raise ValueError(
            f"Record {name!r} has spin-resolved (unrestricted) Fock labels, which a "
            "restricted Hamiltonian head cannot learn: set --config.heads.spin=sum_diff (or "
            "alpha_beta) together with --config.model.charge_spin_embedding=True.")
    if spec.charge_spin_embedding is False and int(record.spin) != 0:
        raise ValueError(
            f"Record {name!r} is open shell (2S={record.spin}) but the model does not read the "
            "spin: set --config.model.charge_spin_embedding=True (and --config.heads.spin="
            "sum_diff for spin-resolved labels).")
    if spec.charge_spin_embedding:
        if not -MAX_CHARGE <= int(record.charge) <= MAX_CHARGE:
            raise ValueError(f"Record {name!r} has charge {record.charge}, outside the range "
                             f"-{MAX_CHARGE}..{MAX_CHARGE} of the charge embedding.")
        if not 0 <= int(record.spin) <= MAX_SPIN:
            raise ValueError(f"Record {name!r} has 2S={record.spin}, outside the range "
                             f"0..{MAX_SPIN} of the spin embedding (2S = n_alpha - n_beta "
                             "must be non-negative: swap the alpha and beta labels).")


def qm_labels(record: Record, spec: GraphSpec, senders: np.ndarray,
              receivers: np.ndarray) -> QMLabels:
    """The :class:`QMLabels` of a record (targets chosen by ``spec.qm_targets``).

    Open shells (2S != 0) need a spin-resolved model (``spec.spin_resolved``) and, if they
    have orbital-energy targets, the unrestricted ``[2, K]`` ones (alpha row, beta row) the
    labeller stores for them (:mod:`helm_jax.data.reference_targets`). Restricted ``[K]``
    targets serve both spins of a closed shell.

    Raises:
      ValueError: the record lacks the overlap or AO dipole integrals; its charge and 2S
        do not fit its electron count; an open shell without ``spec.spin_resolved`` or with
        ``[K]`` orbital-energy targets.
    """
    ex = record.extras
    name = record.key or "<record>"
    if record.overlap is None or "ao_dipole" not in ex:
        raise ValueError(
            f"Record {name!r} has no overlap or AO dipole integrals, which the "
            "quantum-chemistry losses need: label the data with `data_prep/label.py --dipole` "
            "(and --targets_basis for large-basis targets), or set config.qm.enabled=False.")
    t = spec.template
    z = np.asarray(record.elements)
    charges = np.array([zi - t.element(zi).ecp_electrons for zi in z], np.float64)
    n_electrons = int(round(charges.sum())) - int(record.charge)
    spin = int(record.spin)
    if n_electrons < abs(spin) or (n_electrons + spin) % 2:
        raise ValueError(f"Record {name!r}: {n_electrons} electrons (charge {record.charge}) "
                         f"cannot have 2S={spin}.")
    n_alpha, n_beta = (n_electrons + spin) // 2, (n_electrons - spin) // 2
    if spin != 0 and not spec.spin_resolved:
        raise ValueError(
            f"Record {name!r} is open shell (2S={spin}): its quantum-chemistry targets need "
            "alpha and beta Hamiltonians, set --config.heads.spin=sum_diff (or alpha_beta) "
            "together with --config.model.charge_spin_embedding=True.")
    origin = ex.get("dipole_origin", np.zeros(3))
    coords_bohr = np.asarray(record.coords, np.float64) / units.BOHR_ANGSTROM
    prefix = "targets_" if spec.qm_targets == "large_basis" else ""
    alpha = prefix + "polarizability" + ("_ff" if spec.qm_polarizability_ff else "")
    mo_energy = mo_energy_beta = ex.get(prefix + "mo_energy")
    if mo_energy is not None:
        mo_energy = np.asarray(mo_energy, np.float64)
        if mo_energy.ndim == 2 and mo_energy.shape[0] == 2:  # unrestricted: alpha, beta
            mo_energy, mo_energy_beta = mo_energy[0], mo_energy[1]
        elif mo_energy.ndim == 1 and spin == 0:  # restricted: both spins
            mo_energy_beta = mo_energy
        else:
            raise ValueError(
                f"Record {name!r} (2S={spin}) has {prefix}mo_energy of shape "
                f"{list(mo_energy.shape)}; an open shell needs the unrestricted [2, K] "
                "orbital energies (alpha row, beta row): relabel it with "
                f"`data_prep/label.py --dipole{' --targets_basis=...' if prefix else ''}` "
                "(UKS/UHF for 2S != 0), or set config.qm.enabled=False.")
    return QMLabels(
        ao_index=blocks.full_indices(z, t, senders, receivers), block_size=t.n_ao ** 2,
        overlap=np.asarray(record.overlap, np.float64),
        ao_dipole=np.asarray(ex["ao_dipole"], np.float64),
        nuclear_dipole=charges @ (coords_bohr - origin), n_alpha=n_alpha, n_beta=n_beta,
        mo_energy=mo_energy, dipole=ex.get(prefix + "dipole"),
        polarizability=ex.get(alpha), mo_energy_beta=mo_energy_beta)


def slot_mask_table(template: basis_lib.Template) -> np.ndarray:
    """bool ``[119, n_slots]``: which template shell slots each element occupies."""
    table = np.zeros((119, len(template.slot_l)), bool)
    for z in template.elements:
        table[z] = template.slot_mask(z)
    return table


def label_masks(species_i, species_j, layout: blocks.IrrepsLayout, table):
    """Validity of each irreps label component for atom pairs (numpy or jax).

    Args:
      species_i: ``[...]`` atomic numbers of the row atoms (0 for padding: all invalid).
      species_j: ``[...]`` atomic numbers of the column atoms.
      layout: the labels' irreps layout.
      table: :func:`slot_mask_table` of the template.

    Returns:
      bool ``[..., layout.dim]``.
    """
    xp = blocks._xp(species_i)
    table = xp.asarray(table)
    return layout.valid_mask(table[species_i], table[species_j])
