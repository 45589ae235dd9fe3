"""cowlab.report.figures on a tiny synthetic results dir, and notebook 01 executed against it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cowlab import results
from cowlab.report import figures
from cowlab.results import RunWriter, Sample

MiB, GiB = 1 << 20, 1 << 30
SIZES = [MiB, 64 * MiB, GiB]
LAYERS = [1, 4]
SPREAD = [-2, -1, 0, 1, 2]  # × 0.5 ms around each median: p10 = median - 0.8 ms, p90 = + 0.8 ms
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "01-container-creation.ipynb"


def points():
    return [(s, 1) for s in SIZES] + [(MiB, n) for n in LAYERS if n != 1]


def write_run(out: Path, run_id: str, driver: str, median_ms, host="hostA", emulated=False, floor_ms=None):
    prov = {
        "hostname": host,
        "kernel": "6.1.0-test",
        "virtualization": "tcg" if emulated else "none",
        "emulated": emulated,
        "backing_fs": "ext4",
        "cowlab_version": "0.1.0",
        "driver": driver,
    }
    w = RunWriter(out, run_id, prov)
    for size, layers in points():
        params = {"image_size_bytes": size, "layers": layers}
        for rep, d in enumerate(SPREAD):
            w.add(
                Sample("create_seconds", (median_ms(size, layers) + 0.5 * d) / 1e3, "s", params, rep),
                driver,
                "creation",
            )
            w.add(Sample("remove_seconds", (2.0 + 0.5 * d) / 1e3, "s", params, rep), driver, "creation")
            if floor_ms is not None:  # cowlab's container: 1.2× the floor
                for m, ms in (("container_floor_seconds", floor_ms), ("cowlab_container_seconds", 1.2 * floor_ms)):
                    w.add(Sample(m, (ms + 0.1 * d) / 1e3, "s", params, rep), driver, "mount_floor")
    w.add(Sample("space_bytes", 4096, "B", {"event": "create"}), driver, "space")  # another workload
    w.close("complete")


def overlay2_ms(size, layers):  # 3 ms, 3.3 ms at 1 GiB: "1.1×"
    return 3.3 if size == GiB else 3.0 + 0.1 * (layers - 1)


def vfs_ms(size, layers):  # proportional to size: 2 ms per MiB, "1,024×" from 1 MiB to 1 GiB
    return 2.0 * size / MiB * layers


@pytest.fixture(scope="module")
def resdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    write_run(out, "r1-overlay2", "overlay2", overlay2_ms, floor_ms=1.0)
    write_run(out, "r2-vfs", "vfs", vfs_ms)
    write_run(out, "r3-overlay2-tcg", "overlay2", lambda s, n: 30.0, host="tcgvm", emulated=True)
    return out


@pytest.fixture(scope="module")
def df(resdir):
    return results.load(resdir)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt  # after cowlab.report.figures has chosen the backend

    plt.close("all")


def test_summarize_numbers(df):
    c = df[df["metric"] == "create_seconds"].assign(emulated=figures.is_emulated(df))
    s = figures.summarize(c, ["driver", "emulated", "image_size_bytes", "layers"])
    assert list(s.columns) == ["driver", "emulated", "image_size_bytes", "layers", "median", "p10", "p90", "n"]
    row = s[(s["driver"] == "overlay2") & ~s["emulated"] & (s["image_size_bytes"] == MiB) & (s["layers"] == 1)]
    assert len(row) == 1
    r = row.iloc[0]
    assert r["n"] == 5
    assert r["median"] == pytest.approx(3.0e-3)
    assert r["p10"] == pytest.approx(2.2e-3)
    assert r["p90"] == pytest.approx(3.8e-3)
    assert len(s) == 3 * len(points())
    assert figures.summarize(c.iloc[0:0], "driver").empty


def _series(ax):
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    styles = {lab: c.lines[0].get_linestyle() for lab, c in zip(labels, ax.containers, strict=True)}
    colors = {lab: c.lines[0].get_color() for lab, c in zip(labels, ax.containers, strict=True)}
    return labels, styles, colors


def test_line_by_driver_one_series_per_driver_emulated_apart(df):
    ax = figures.line_by_driver(df, "image_size_bytes", "create_seconds", logx=None, filter={"layers": 1})
    labels, styles, colors = _series(ax)
    assert len(ax.containers) == 3
    assert sorted(labels) == ["overlay2", "overlay2 (emulated)", "vfs"]
    assert styles["overlay2 (emulated)"] == "--" and styles["overlay2"] == "-"
    assert colors["overlay2"] == colors["overlay2 (emulated)"] == figures.driver_color("overlay2")
    assert colors["vfs"] != colors["overlay2"]
    assert "emulated" in ax.get_legend().get_title().get_text()
    # vfs spans 2 ms .. 2 s: log y chosen automatically; log x for sizes spanning 3 decades
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    assert ax.get_ylabel().startswith("create time (s)")  # up to 2 s
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["1 MiB", "64 MiB", "1 GiB"]
    # one point per image size on each series, medians as y
    xs, ys = ax.containers[0].lines[0].get_data()
    assert len(xs) == 3


def test_line_by_driver_native_only_and_empty(df):
    native = df[~figures.is_emulated(df)]
    ax = figures.line_by_driver(native, "layers", "create_seconds", filter={"image_size_bytes": MiB})
    labels, _, _ = _series(ax)
    assert sorted(labels) == ["overlay2", "vfs"]
    assert ax.get_ylabel() == "create time (ms)"  # 3 ms .. 8 ms: linear, in ms
    assert ax.get_yscale() == "linear"
    assert "emulated" not in ax.get_legend().get_title().get_text()
    ax = figures.line_by_driver(df.iloc[0:0], "layers", "create_seconds")
    assert "no create_seconds data" in ax.texts[0].get_text()


def test_ratio_sentence(df):
    s = figures.ratio_sentence(df, "create_seconds", "image_size_bytes", MiB, GiB, "overlay2", filter={"layers": 1})
    assert s.startswith(
        "overlay2: creating a container from a 1 GiB image takes 1.1× as long as "
        "from a 1 MiB image (3.3 ms vs 3 ms, medians"
    )
    assert "emulated samples left out" in s  # native wins, the mix is not pooled
    s = figures.ratio_sentence(
        df, "create_seconds", "image_size_bytes", MiB, GiB, "overlay2", filter={"layers": 1}, emulated=True
    )
    assert s.startswith("overlay2 (emulated):") and " 1× as long" in s
    s = figures.ratio_sentence(df, "create_seconds", "image_size_bytes", MiB, GiB, "vfs", filter={"layers": 1})
    assert "1,024× as long" in s and "(2.05 s vs 2 ms," in s
    s = figures.driver_ratio_sentence(
        df, "create_seconds", "image_size_bytes", GiB, "vfs", "overlay2", filter={"layers": 1}
    )
    assert s.startswith("At a 1 GiB image, creating a container with vfs takes 621× as long as with overlay2")


def test_ratio_sentence_missing_data(df):
    s = figures.ratio_sentence(df, "create_seconds", "image_size_bytes", MiB, 4 * GiB, "overlay2", filter={"layers": 1})
    assert "no create_seconds data at image size 4 GiB" in s and "have: 1 MiB, 64 MiB, 1 GiB" in s
    assert "no create_seconds data" in figures.ratio_sentence(df, "create_seconds", "layers", 1, 4, "zfs")
    assert "no ratio" in figures.ratio_sentence(df.iloc[0:0], "create_seconds", "layers", 1, 4, "vfs")
    s = figures.driver_ratio_sentence(
        df, "create_seconds", "image_size_bytes", GiB, "zfs", "overlay2", filter={"layers": 1}
    )
    assert "no create_seconds data" in s and "zfs" in s


def test_pooling_other_parameters_warns(df):
    with pytest.warns(UserWarning, match="differ in layers"):
        figures.ratio_sentence(df, "create_seconds", "image_size_bytes", MiB, GiB, "vfs")


def test_overhead_bars(df):
    ax = figures.overhead_bars(df)
    assert {t.get_text() for t in ax.texts} == {"1.2×"}  # cowlab ÷ floor, at every point
    ax = figures.overhead_bars(df[df["driver"] == "vfs"])
    assert "no mount_floor data" in ax.texts[0].get_text()


def test_results_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COWLAB_RESULTS", str(tmp_path))
    assert figures.results_dir() == tmp_path
    monkeypatch.delenv("COWLAB_RESULTS")
    assert figures.results_dir(REPO / "notebooks") == REPO / "results"
    assert figures.results_dir(REPO) == REPO / "results"


def test_importable_without_display():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    out = subprocess.run(
        [sys.executable, "-c", "import cowlab.report.figures, matplotlib; print(matplotlib.get_backend())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().lower() == "agg"


def run_notebook(path: Path, resdir: Path, monkeypatch) -> str:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("COWLAB_RESULTS", str(resdir))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    text = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o["output_type"] != "error", f"{o.get('ename')}: {o.get('evalue')}"
            text.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(text)


def test_notebook_01_executes(resdir, monkeypatch):
    out = run_notebook(NOTEBOOK, resdir, monkeypatch)
    assert "vfs: creating a container from a 1 GiB image takes 1,024× as long" in out
    assert "overlay2 (emulated):" in out
    assert "vfs takes 621× as long as with overlay2" in out


def test_notebook_01_without_results_or_with_one_driver(tmp_path, resdir, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_notebook(NOTEBOOK, empty, monkeypatch)
    assert "nox -s bench-overlay2 -- --quick" in out
    out = run_notebook(NOTEBOOK, resdir / "hostA" / "r2-vfs", monkeypatch)
    assert "Only vfs has results" in out and "needs both vfs and overlay2" in out
