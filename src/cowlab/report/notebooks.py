"""Execute the notebooks (what `nox -s notebooks` and CI run): any cell error fails the run."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def run(paths: list[str], timeout: int = 600) -> int:
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    if not files:
        print("no notebooks found", file=sys.stderr)
        return 1
    failed = 0
    for f in files:
        nb = nbformat.read(f, as_version=4)
        t0 = time.perf_counter()
        try:
            # IPC (unix sockets) instead of TCP on localhost: the kernel then has no reason to
            # warn that it runs "over TCP without encryption", and nothing listens on a port.
            # The sockets' path prefix is absolute: the kernel runs in the notebook's directory.
            with tempfile.TemporaryDirectory(prefix="cowlab-nb-") as sock:
                km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sock, "k"))
                try:
                    NotebookClient(
                        nb,
                        km=km,
                        timeout=timeout,
                        kernel_name="python3",
                        resources={"metadata": {"path": str(f.parent)}},
                    ).execute()
                finally:  # a kernel manager we hand in is ours to shut down, not nbclient's
                    if km.has_kernel:
                        km.shutdown_kernel()
            print(f"ok      {f} ({time.perf_counter() - t0:.1f} s)")
        except Exception as e:  # nbclient raises CellExecutionError with the cell's traceback
            failed += 1
            print(f"FAILED  {f}: {str(e)[-2000:]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "run":
        sys.exit("usage: python -m cowlab.report.notebooks run NOTEBOOK_OR_DIR...")
    sys.exit(run(sys.argv[2:]))
