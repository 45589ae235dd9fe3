"""cowlab.report: verdict rules on synthetic results (the verdict follows the samples), the
catalogue against the slides, README's claims table against the committed results, compare's
marks, and the page opened in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cowlab import results
from cowlab.report import catalogue, compare, render, verdicts
from cowlab.report.places import reference_trees
from cowlab.results import RunWriter, Sample

REPO = Path(__file__).resolve().parents[1]
MiB, GiB = 1 << 20, 1 << 30
SPREAD = [0.9, 0.95, 1.0, 1.05, 1.1]
SLIDES = sorted(Path(os.environ.get("COWLAB_SLIDES", "/work/shared/reference")).glob("000_*.txt"))


def run(
    out: Path, driver: str, samples, host="hostA", emulated=False, quick=False, mode="primitive", workload="creation"
):
    prov = {
        "hostname": host,
        "kernel": "6.1.0-test",
        "virtualization": "tcg" if emulated else "none",
        "emulated": emulated,
        "driver": driver,
        "quick": quick,
        "backing_fs": "ext4",
    }
    rid = f"{len(list(out.rglob('run.json'))):04d}-{driver}"
    w = RunWriter(out, rid, prov)
    for metric, value, unit, params in samples:
        for rep, f in enumerate(SPREAD):
            w.add(Sample(metric, value * f, unit, params, rep), driver, workload, mode)
    w.close("complete")


def creation(ms_1mib: float, ms_1gib: float):
    return [
        ("create_seconds", ms_1mib / 1e3, "s", {"image_size_bytes": MiB, "layers": 1}),
        ("create_seconds", ms_1gib / 1e3, "s", {"image_size_bytes": GiB, "layers": 1}),
    ]


def verdict_of(path, claim, driver, **match):
    vs = verdicts.evaluate(catalogue.claims(), results.load(path))
    got = [
        v for v in vs if v["claim"] == claim and v["driver"] == driver and all(v.get(k) == x for k, x in match.items())
    ]
    assert len(got) == 1, got
    return got[0]


# --- the catalogue -----------------------------------------------------------------------------


def test_catalogue_is_complete_and_well_formed():
    cs = catalogue.claims()
    assert 40 <= len(cs) <= 60  # every testable slide line (tests/test_report_coverage.py)
    assert len({c.id for c in cs}) == len(cs)
    for c in cs:
        assert len(c.rule.why) > 40, c.id  # every threshold says why it is what it is
        assert c.mechanism.count(". ") >= 1, c.id  # two sentences
    refs = catalogue.references()
    ids = {c.id for c in cs}
    assert {r.id for r in refs} >= {
        "docker-max-layers",
        "overlayfs-max-stack",
        "containerd-idmapped",
        "containerd-erofs-unpack",
        "slacker-pull-share",
        "tarasov-ordwr",
    }
    assert all(r.claim in ids and r.url.startswith("https://") for r in refs)


def test_bad_catalogue_entries_are_refused_with_the_claim_named():
    with pytest.raises(Exception, match="claim x: rule kind 'guess'"):
        catalogue.parse_claims(
            '[[claim]]\nid="x"\nsection="s"\nquote="q"\nmechanism="m"\nworkload="w"\n'
            'metric="m"\n[claim.rule]\nkind="guess"\nholds_if="above"\nthreshold=1\nwhy="y"\n'
        )


@pytest.mark.skipif(not SLIDES, reason="slide text not found (set COWLAB_SLIDES to the directory of 000_*.txt)")
def test_every_quote_is_the_slides_exact_words():
    text = " ".join(SLIDES[0].read_text().split())
    for c in catalogue.claims():
        assert " ".join(c.quote.split()) in text, c.id


# --- verdicts follow the samples ----------------------------------------------------------------


def test_vfs_creation_made_flat_changes_the_verdicts(tmp_path):
    copying, flat = tmp_path / "copying", tmp_path / "flat"
    run(copying, "vfs", creation(10, 3000))
    run(flat, "vfs", creation(10, 11))
    assert verdict_of(copying, "create-free", "vfs")["verdict"] == "fails"
    assert verdict_of(copying, "copy-otherwise", "vfs")["verdict"] == "holds"
    v = verdict_of(flat, "create-free", "vfs")
    assert v["verdict"] == "holds" and v["value"] == pytest.approx(1.1) and v["n"] == 10
    assert verdict_of(flat, "copy-otherwise", "vfs")["verdict"] == "fails"


def test_emulated_runs_are_a_host_of_their_own(tmp_path):
    run(tmp_path, "overlay2", creation(1, 1.1))
    run(tmp_path, "overlay2", creation(100, 900), host="hostA-vm", emulated=True)
    vs = [
        v
        for v in verdicts.evaluate(catalogue.claims(), results.load(tmp_path))
        if v["claim"] == "create-free" and v["driver"] == "overlay2"
    ]
    assert sorted((v["emulated"], v["verdict"]) for v in vs) == [(False, "holds"), (True, "fails")]
    assert all(v["n"] == 10 for v in vs)  # neither side pooled with the other


def test_quick_and_full_grids_are_not_pooled(tmp_path):
    run(tmp_path, "vfs", creation(10, 3000), quick=False)
    run(tmp_path, "vfs", creation(10, 10), quick=True)
    v = verdict_of(tmp_path, "create-free", "vfs")
    assert (v["grid"], v["verdict"], v["n"]) == ("full", "fails", 10)
    assert any("quick grid" in n for n in v["notes"])


def test_a_split_that_disagrees_is_depends_with_its_condition(tmp_path):
    samples = []
    for fs, grows in (("ext4", True), ("xfs", False)):
        for size, ms in ((4096, 1.0), (GiB, 1000.0 if grows else 1.2)):
            samples.append(
                (
                    "copyup_seconds",
                    ms / 1e3,
                    "s",
                    {"file_size_bytes": size, "op": "append_1B", "cache": "cold", "backing_fs": fs},
                )
            )
    run(tmp_path, "overlay2", samples, workload="copyup")
    v = verdict_of(tmp_path, "copyup-big-slow", "overlay2")
    assert v["verdict"] == "depends"
    assert v["condition"] == "holds on ext4; fails on xfs"


def test_no_data_is_not_measured_with_the_command_that_would_measure_it(tmp_path):
    run(tmp_path, "overlay2", creation(1, 1))
    vs = verdicts.evaluate(catalogue.claims(), results.load(tmp_path), drivers=["btrfs"])
    v = next(v for v in vs if v["claim"] == "cache-once" and v["driver"] == "overlay2")
    assert v["verdict"] == "not measured" and "no density samples" in v["why"]
    assert v["command"] == "sudo nox -s bench-overlay2 -- --workload density"
    b = next(v for v in vs if v["claim"] == "create-free" and v["driver"] == "btrfs")
    assert (b["verdict"], b["host"]) == ("not measured", None) and "bench-btrfs" in b["command"]


def test_report_files(tmp_path):
    run(tmp_path / "r", "vfs", creation(10, 3000))
    run(tmp_path / "r", "overlay2", creation(1, 1.2))
    got = render.build(tmp_path / "r", tmp_path / "out", drivers=[], figures=False)
    vs = json.loads((tmp_path / "out" / "verdicts.json").read_text())
    assert len(vs) == got["verdicts"]
    need = {"claim", "quote", "driver", "host", "verdict", "value", "unit", "n", "emulated"}
    assert all(need <= set(v) and v["verdict"] in verdicts.VERDICTS for v in vs)
    html = (tmp_path / "out" / "index.html").read_text()
    assert 'id="verdict-matrix"' in html and "<script" not in html and "http://" not in html
    md = (tmp_path / "out" / "README.md").read_text()
    assert "| [`create-free`](index.html#create-free) |" in md


def test_readme_claims_table_is_the_committed_results_report():
    cs, _, vs = render.compute(reference_trees(REPO / "results"))  # not a maintainer's results/local
    want = render.summary_markdown(cs, vs, "report/index.html")
    got = render.readme_summary((REPO / "README.md").read_text())
    assert got == want, "README.md's claims table is stale: run `nox -s report` and commit"
    committed = REPO / "report" / "verdicts.json"
    assert committed.exists(), "report/ is built from results/ and committed: run `nox -s report`"
    old = {(v["claim"], v["driver"], v["host"]): (v["verdict"], v["n"]) for v in json.loads(committed.read_text())}
    new = {(v["claim"], v["driver"], v["host"]): (v["verdict"], v["n"]) for v in vs}
    assert old == new, "report/verdicts.json is stale: run `nox -s report` and commit"


# --- compare ----------------------------------------------------------------------------------


def test_compare_marks_only_changes_outside_both_sides_noise(tmp_path):
    run(tmp_path / "a", "overlay2", creation(1.0, 1.0))
    run(tmp_path / "b", "overlay2", creation(2.0, 1.02))
    rows = {r["params"]: r for r in compare.compare(tmp_path / "a", tmp_path / "b")}
    slow = rows["image_size=1MiB layers=1"]
    assert slow["mark"] == "+" and slow["better"] is False and slow["ratio"] == pytest.approx(2.0)
    assert rows["image_size=1GiB layers=1"]["mark"] == ""


def test_compare_cli_fits_80_columns(tmp_path):
    run(tmp_path / "a", "overlay2", creation(1.0, 1.0))
    run(tmp_path / "b", "overlay2", creation(2.0, 1.0))
    r = subprocess.run(
        [sys.executable, "-m", "cowlab", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--all"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    assert "2×" in r.stdout and max(map(len, r.stdout.splitlines())) <= 80
    bad = subprocess.run(
        [sys.executable, "-m", "cowlab", "compare", str(tmp_path / "nope"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "no such results directory" in bad.stderr


# --- the page in a real browser ----------------------------------------------------------------

CHECK = """<html><body><pre id="result">pending</pre>
<iframe id="f" src="index.html" style="width:1280px;height:900px"></iframe>
<script>
document.getElementById('f').addEventListener('load', function () {
  var d = this.contentDocument, out = [];
  if (!d) { document.getElementById('result').textContent = 'NO-ACCESS'; return; }
  var imgs = d.querySelectorAll('img');
  for (var i = 0; i < imgs.length; i++) {
    out.push((imgs[i].complete && imgs[i].naturalWidth > 0 ? 'OK ' : 'BROKEN ') + imgs[i].getAttribute('src'));
  }
  var m = d.getElementById('verdict-matrix');
  out.push('MATRIX ' + (m ? m.querySelectorAll('tbody tr').length : 0));
  document.getElementById('result').textContent = out.join('\\n');
});
</script></body></html>
"""


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium: sudo bash vagrant/provision/report.sh")
def test_committed_results_report_opens_in_headless_chromium(tmp_path):
    out = tmp_path / "report"
    got = render.build(reference_trees(REPO / "results"), out)
    assert got["figures"] >= 10
    # The check page is the test's, not the report's: the report itself has no script at all.
    (out / "check.html").write_text(CHECK)
    chrome = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    r = subprocess.run(
        [
            *chrome,
            "--allow-file-access-from-files",
            "--virtual-time-budget=20000",
            "--dump-dom",
            (out / "check.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = r.stdout.split('<pre id="result">', 1)[-1].split("</pre>", 1)[0]
    lines = result.splitlines()
    assert f"MATRIX {len(catalogue.claims())}" in lines, result
    imgs = [x for x in lines if x.startswith(("OK ", "BROKEN "))]
    assert len(imgs) == got["figures"] and all(x.startswith("OK ") for x in imgs), result
    shot = out / "screenshot.png"
    subprocess.run(
        [*chrome, "--window-size=1280,2000", f"--screenshot={shot}", (out / "index.html").as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000
    keep = Path(os.environ.get("COWLAB_TEST_ARTIFACTS", REPO / ".test-output"))
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "report-screenshot.png")


def test_a_slow_first_repetition_is_flagged_as_warm_up(tmp_path):
    out = tmp_path / "r"
    w = RunWriter(out, "0000-vfs", {"hostname": "h", "kernel": "k", "emulated": False, "driver": "vfs", "quick": False})
    for size, ms in ((MiB, 10.0), (GiB, 3000.0)):
        for rep, v in enumerate([ms * 10, ms, ms, ms, ms]):  # the first one 10× the rest
            w.add(
                Sample("create_seconds", v / 1e3, "s", {"image_size_bytes": size, "layers": 1}, rep), "vfs", "creation"
            )
    w.close("complete")
    v = verdict_of(out, "create-free", "vfs")
    assert v["verdict"] == "fails" and any("warm-up" in n for n in v["notes"])


def test_figures_keep_emulated_hosts_apart_and_every_driver_its_own_colour(tmp_path):
    from cowlab.report import figures
    from cowlab.storage.drivers import DRIVERS

    run(tmp_path, "overlay2", creation(1, 1.1))
    run(tmp_path, "vfs", creation(10, 3000))
    run(tmp_path, "devicemapper-loop", creation(200, 210), host="hostA-vm", emulated=True)
    fig = figures.host_panels(results.load(tmp_path), "image_size_bytes", "create_seconds", filter={"layers": 1})
    panels = {ax.get_title(): sorted(ax.get_legend_handles_labels()[1]) for ax in fig.axes if ax.get_visible()}
    assert panels == {
        "hostA (6.1) · native": ["overlay2", "vfs"],  # each host's kernel named
        "hostA-vm (6.1) · emulated (TCG)": ["devicemapper-loop (emulated)"],
    }
    names = set(DRIVERS) | {"erofs", "composefs"}
    assert len({figures.driver_color(d) for d in names}) == len(names)


def test_a_fallback_metric_decides_where_the_preferred_one_is_missing(tmp_path):
    per_k = [("page_cache_bytes", 64 * MiB * k, "B", {"containers": k}) for k in (1, 8)]
    run(tmp_path / "machine", "vfs", per_k, workload="density")
    v = verdict_of(tmp_path / "machine", "cache-once", "vfs")
    assert (v["verdict"], v["metric"]) == ("fails", "page_cache_bytes")
    assert any("decided by page_cache_bytes" in n for n in v["notes"])
    cgroup = [("cgroup_memory_bytes", 64 * MiB, "B", {"containers": k, "stat": "file"}) for k in (1, 8)]
    run(tmp_path / "machine", "vfs", cgroup, workload="density")  # the preferred metric wins
    v = verdict_of(tmp_path / "machine", "cache-once", "vfs")
    assert (v["verdict"], v["metric"]) == ("holds", "cgroup_memory_bytes")


def test_a_driver_without_the_split_param_is_decided_unsplit_and_nothing_copied_is_no_growth(tmp_path):
    # vfs has no redirect_dir (None): its rename samples are one group, not "lacking points";
    # a rename that writes 0 bytes at 1 MiB and at 64 MiB does not grow with size (ratio 1)
    for driver, copies in (("vfs", False), ("fuse-overlayfs", True)):
        run(
            tmp_path,
            driver,
            [
                (
                    "space_bytes",
                    size if copies else 0,
                    "B",
                    {"dir_bytes": size, "event": "rename", "redirect_dir": None},
                )
                for size in (MiB, 64 * MiB)
            ],
            workload="rename",
        )
    v = verdict_of(tmp_path, "copyup-rename-dir", "vfs")
    assert (v["verdict"], v["value"]) == ("fails", 1.0) and "no growth" in v["detail"], v
    assert verdict_of(tmp_path, "copyup-rename-dir", "fuse-overlayfs")["verdict"] == "holds"


def test_hard_links_an_import_adds_decide_the_overlay2_claim(tmp_path):
    for driver, links in (("overlay2", 0), ("overlay", 3000)):
        run(tmp_path, driver, [("hard_links", links, "count", {"event": "import", "layers": 4})], workload="inodes")
    assert verdict_of(tmp_path, "overlay2-hard-links", "overlay2")["verdict"] == "fails"
    assert verdict_of(tmp_path, "overlay2-hard-links", "overlay")["verdict"] == "holds"


def test_an_engine_claim_for_a_driver_docker_lacks_says_so(tmp_path):
    run(tmp_path, "composefs", creation(1, 1))
    v = verdict_of(tmp_path, "start-regardless-of-size", "composefs")
    assert v["verdict"] == "not measured" and "Docker has no storage driver" in v["why"], v


def test_a_lab_run_is_its_own_grid_not_the_full_one(tmp_path):
    # `cowlab lab thinpool` runs have no grid (quick: None): their verdicts say "lab"
    run(
        tmp_path,
        "devicemapper-loop",
        [("writer_failed", 1, "count", {"mode": "timeout"})],
        quick=None,
        workload="thinpool_timeout",
        emulated=True,
    )
    v = verdict_of(tmp_path, "pool-full-stalls", "devicemapper-loop")
    assert (v["verdict"], v["grid"]) == ("fails", "lab"), v
