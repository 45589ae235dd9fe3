"""Where runs and reports land: a user's own runs and their report under results/local/
(git-ignored), the committed reference runs in results/<host>/ and their report in report/.

The reference is rebuilt only when asked for (`nox -s report`, `nox -s bench-all -- --reference`):
a user's `nox -s bench-all` never writes into the committed tree. Stdlib only: noxfile.py
imports this before any session has installed cowlab's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cowlab.results import LOCAL_DIR

REFERENCE_RESULTS = "results"  # results/<host>/<run_id>: the committed reference runs
REFERENCE_REPORT = "report"  # report/: the committed page built from them
LOCAL_REPORT = "report"  # results/local/report/: the user's page, beside the user's runs


@dataclass(frozen=True)
class Places:
    results: Path  # where `cowlab bench --out` writes the runs
    report: Path  # where `cowlab report --out` writes the page
    readme: Path | None  # the README.md whose claims table the report rewrites
    compare_with: Path | None  # reference runs shown beside the user's ("my machine vs the reference")


def bench_places(checkout: str | Path, out: str | Path | None = None, reference: bool = False) -> Places:
    """The places of `nox -s bench-all` in `checkout`. Default: the user's runs in
    results/local/ and their report in results/local/report/, compared with the committed
    reference runs when the checkout has any. `reference`: the maintainer's choice, runs into
    results/ and the committed report/ and README.md table rebuilt. `out`: runs in OUT and the
    report in OUT/report (compared with the reference too)."""
    root = Path(checkout)
    ref = root / REFERENCE_RESULTS
    if reference:
        if out is not None:
            raise ValueError("--reference writes the committed tree: it takes no --out")
        return Places(ref, root / REFERENCE_REPORT, root / "README.md", None)
    if out is not None and Path(root, out).resolve() == ref.resolve():
        raise ValueError(f"{ref} holds the committed reference runs: only --reference writes there")
    runs = Path(root, out) if out is not None else ref / LOCAL_DIR
    return Places(runs, runs / LOCAL_REPORT, None, ref if reference_trees(ref) else None)


def reference_trees(path: str | Path) -> list[Path]:
    """The run trees under `path` that are reference runs: everything but its local/ (a
    user's own runs, read only when named: `cowlab report results/local`)."""
    p = Path(path)
    if not p.is_dir():
        return []
    if p.name == LOCAL_DIR or not (p / LOCAL_DIR).is_dir():
        return [p] if any(p.rglob("run.json")) else []
    return [c for c in sorted(p.iterdir()) if c.is_dir() and c.name != LOCAL_DIR and any(c.rglob("run.json"))]
