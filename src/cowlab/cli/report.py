"""`cowlab report` and `cowlab compare`: thin commands over cowlab.report."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from cowlab.base.errors import CowlabError


def _tree(p: str) -> list[Path]:
    """The run trees of results directory `p`; a tree's local/ (a user's own runs) is left out
    unless named itself, so `results` is the committed reference alone."""
    from cowlab.report.places import reference_trees

    path = Path(p)
    if not path.exists():
        raise CowlabError(f"{p}: no such results directory")
    trees = reference_trees(path)
    if not trees:
        mine = path / "local"
        hint = f"; your own runs are read when named: {mine}" if mine.is_dir() else ""
        raise CowlabError(f"{p}: no runs under it (a results tree holds <host>/<run>/run.json){hint}")
    return trees


@click.command("report")
@click.argument("results_dir", metavar="RESULTS", default="results")
@click.option(
    "--out",
    "out",
    default="report",
    show_default=True,
    metavar="DIR",
    help="Where index.html, README.md, verdicts.json and figures/ go (report/ is the "
    "committed reference page: your own runs' page goes to results/local/report).",
)
@click.option("--no-figures", is_flag=True, help="Verdicts, Markdown and HTML only (seconds).")
@click.option(
    "--compare-with",
    "baseline",
    metavar="DIR",
    help="Add a compare section: this results tree (A) against RESULTS (B).",
)
@click.option("--readme", metavar="FILE", help="Also rewrite the claims table between the markers of this README.md.")
def report_cmd(results_dir, out, no_figures, baseline, readme):
    """Every slide claim's verdict per driver × host, computed from RESULTS, as a page that
    opens from file:// (index.html), Markdown (README.md) and JSON (verdicts.json). RESULTS's
    local/ (your own runs) is read only when named: `cowlab report results/local --out
    results/local/report --compare-with results` is your machine against the reference."""
    from cowlab.report import compare, render

    src = _tree(results_dir)
    rows = compare.compare(_tree(baseline), src) if baseline else None
    t0 = time.monotonic()
    got = render.build(
        src,
        Path(out),
        figures=not no_figures,
        compare_rows=rows,
        source=results_dir,
        compare_title=f"{baseline} (A) → {results_dir} (B)" if baseline else "",
    )
    if readme:
        _rewrite_readme(Path(readme), got["claims"], got["verdict_list"])
    c = got["counts"]
    words = ", ".join(f"{c[w]} {w}" for w in c)
    click.echo(
        f"{got['verdicts']} verdicts ({words}), {got['figures']} figures in "
        f"{time.monotonic() - t0:.1f} s → {Path(out) / 'index.html'}"
    )


def _rewrite_readme(readme: Path, cs, vs) -> None:
    from cowlab.report import render

    text = readme.read_text()
    try:
        new = render.replace_summary(text, render.summary_markdown(cs, vs, "report/index.html"))
    except ValueError:
        raise CowlabError(f"{readme}: no claims markers ({render.SUMMARY_BEGIN} … {render.SUMMARY_END})") from None
    if new != text:
        readme.write_text(new)
        click.echo(f"{readme}: claims table updated")


@click.command("compare")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--all", "show_all", is_flag=True, help="Every point, not only those outside the noise.")
@click.option("--limit", type=int, default=None, help="At most this many rows.")
def compare_cmd(a, b, show_all, limit):
    """What changed from results tree A to B: per driver × workload × metric × params, the ratio
    of medians B ÷ A, marked (+ larger, - smaller; red worse, green better) when the two
    sides' p10–p90 ranges do not overlap. My machine against the reference: `cowlab compare
    results results/local` (a tree's local/ is read only when named)."""
    from cowlab.report import compare

    rows = compare.compare(_tree(a), _tree(b))
    if not rows:
        raise CowlabError(
            f"{a} and {b} share no measured point (driver, emulated or native, mode, workload, metric, params)"
        )
    compare.print_table(rows, Console(width=min(Console().width, 80)), only_changed=not show_all, limit=limit)
