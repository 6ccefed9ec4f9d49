"""Executes a notebook headless in a fresh kernel, printing each code cell's wall time.

    python notebooks/execute.py notebooks/helm_quickstart.ipynb            # outputs in place
    HELM_QUICKSTART_TINY=1 python notebooks/execute.py notebooks/helm_quickstart.ipynb \
        --out=/tmp/quickstart_tiny.ipynb

The kernel runs in the notebook's directory with this process's environment (so
``HELM_QUICKSTART_*`` variables reach it). A cell that raises stops the run with the cell's
traceback and a non-zero exit status.
"""

import argparse
import os
import time

import nbformat
from nbclient import NotebookClient


def execute(path: str, out: str | None = None, timeout: int = 1800) -> float:
    """Runs every cell of ``path``, writes the executed notebook to ``out`` (default: in
    place) and returns the total wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(
                                os.path.abspath(path))}})
    start = time.time()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            t = time.time()
            client.execute_cell(cell, index)
            if cell.cell_type == "code":
                print(f"cell {index}: {time.time() - t:.1f} s", flush=True)
    total = time.time() - start
    nbformat.write(nb, out or path)
    print(f"executed {path} in {total:.0f} s -> {out or path}")
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--out", default=None, help="Executed copy (default: in place).")
    parser.add_argument("--timeout", type=int, default=1800, help="Seconds per cell.")
    args = parser.parse_args()
    execute(args.notebook, args.out, args.timeout)
