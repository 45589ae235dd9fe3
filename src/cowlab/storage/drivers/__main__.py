"""`python -m cowlab.storage.drivers --write`: regenerate what derives from the driver registry as files
(vagrant/machines.json, the table of docs/drivers.md); without --write, list the drivers."""

import sys
from pathlib import Path

from cowlab.storage.drivers import DRIVERS, write

if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        for p in write(Path.cwd()):
            print(f"wrote {p}")
    elif sys.argv[1:]:
        sys.exit("usage: python -m cowlab.storage.drivers [--write]  (from the project root)")
    else:
        print("\n".join(DRIVERS))
