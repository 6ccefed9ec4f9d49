"""Data: one ``Record`` type from every source, labelling, graphs, padded batches.

``records`` (the Record), ``readers`` (one module per source format), ``h5format``, ``splits``,
``labelling``/``embedded`` (PySCF labels, the shipped dataset), ``geometry`` (input checks,
PySCF Moles), ``graphs`` -> ``batching`` -> ``pipeline`` (graphs, padded jraph batches,
bucketed prefetching iterators), ``statistics`` (per-element normalisation),
``properties`` (quantum-chemistry targets), ``datasets`` (all of it from ``config.data``).
See ``helm_jax/README.md``.
"""
