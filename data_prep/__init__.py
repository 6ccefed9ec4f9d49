"""Command-line data preparation: ``label.py`` (resumable PySCF labelling), ``verify.py``
(overlap check of a dataset file), ``check_rmd17.py`` (agreement with rMD17's ORCA labels),
``make_embedded_geometries.py`` (builds the embedded dataset's geometries from the
molecule table in ``embedded_molecules.py``)."""
