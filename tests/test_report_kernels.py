"""The report's kernel axis (cowlab.report.kernels) on synthetic results trees: a verdict that
differs between kernels is listed with both numbers, one that agrees is not, an emulated-native
timing difference is said not to be a kernel difference, and `cowlab compare` never pools kernels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowlab import results
from cowlab.report import catalogue, compare, kernels, render, verdicts
from cowlab.results import RunWriter, Sample

MiB, GiB, KiB = 1 << 20, 1 << 30, 1 << 10
SPREAD = [0.9, 0.95, 1.0, 1.05, 1.1]
K510, K612, K618 = "5.10.0-30-amd64", "6.12.12-amd64", "6.18.44-test"


def run(out: Path, driver: str, samples, kernel: str, emulated: bool, workload: str, backing="ext4"):
    host = f"h-vm-{kernels.short(kernel).replace('.', '-')}" if emulated else "h"
    prov = {
        "hostname": host,
        "kernel": kernel,
        "virtualization": "tcg" if emulated else "none",
        "emulated": emulated,
        "driver": driver,
        "quick": True,
        "backing_fs": backing,
    }
    w = RunWriter(out, f"{len(list(out.rglob('run.json'))):04d}-{driver}", prov)
    for metric, value, unit, params in samples:
        for rep, f in enumerate(SPREAD):
            w.add(Sample(metric, value * f, unit, params, rep), driver, workload)
    w.close("complete")


def creation(ms_1mib: float, ms_1gib: float):
    return [
        ("create_seconds", ms_1mib / 1e3, "s", {"image_size_bytes": MiB, "layers": 1}),
        ("create_seconds", ms_1gib / 1e3, "s", {"image_size_bytes": GiB, "layers": 1}),
    ]


def new_file(nbytes: float):  # customize-new-file: what writing a 1 KiB file costs on disk
    return [("space_bytes", nbytes, "B", {"event": "write_new_1KiB"})]


def axis(path):
    return kernels.axis(verdicts.evaluate(catalogue.claims(), results.load(path), drivers=[]))


def test_a_verdict_that_differs_between_kernels_is_listed_with_both_numbers(tmp_path):
    r = tmp_path / "r"
    for k, space in ((K510, 8 * KiB), (K612, 64 * MiB)):
        run(r, "overlay2", creation(10, 11), k, True, "creation")  # create-free holds on both
        run(r, "overlay2", new_file(space), k, True, "space")
    ax = axis(r)
    assert [(k["kernel"], k["emulated"]) for k in ax["kernels"]] == [(K510, True), (K612, True)]
    got = {(c["claim"], c["driver"]): c for c in ax["claims"]}
    assert got[("create-free", "overlay2")]["differs"] is False
    assert [e["verdict"] for e in got[("create-free", "overlay2")]["entries"]] == ["holds", "holds"]
    assert got[("customize-new-file", "overlay2")]["differs"] is True
    assert [(c["claim"], c["driver"]) for c in ax["changes"]] == [("customize-new-file", "overlay2")]
    ch = ax["changes"][0]
    assert ch["kind"] == "kernel" and ch["timing"] is False
    assert (ch["a"]["kernel"], ch["a"]["verdict"], ch["b"]["kernel"], ch["b"]["verdict"]) == (
        K510,
        "holds",
        K612,
        "fails",
    )
    assert ch["a"]["value"] == pytest.approx(8 * KiB) and ch["b"]["value"] == pytest.approx(64 * MiB)
    assert "8 KiB" in ch["text"] and "64 MiB" in ch["text"]

    render.build(r, tmp_path / "out", drivers=[], figures=False)
    md = (tmp_path / "out" / "README.md").read_text()
    section = md.split("## What changed between kernels", 1)[1].split("## Every verdict", 1)[0]
    assert "`customize-new-file` | overlay2 | 5.10.0-30-amd64 (emulated): holds 8 KiB" in section
    assert "6.12.12-amd64 (emulated): fails 64 MiB" in section
    assert "`create-free`" not in section  # the same verdict on both kernels is no change
    html = (tmp_path / "out" / "index.html").read_text()
    kern = html.split('<section id="kernels">', 1)[1].split("</section>", 1)[0]
    assert "customize-new-file" in kern.split('id="kernel-verdicts"')[0]
    assert "create-free" not in kern.split('id="kernel-verdicts"')[0]
    matrix = html.split('id="verdict-matrix"', 1)[1].split("</table>", 1)[0]
    assert "✓ 5.10 emu" in matrix and "✗ 6.12 emu" in matrix  # one mark per kernel, named
    saved = json.loads((tmp_path / "out" / "kernels.json").read_text())
    assert [c["claim"] for c in saved["changes"]] == ["customize-new-file"]
    readme = render.summary_markdown(
        catalogue.claims(), verdicts.evaluate(catalogue.claims(), results.load(r), drivers=[])
    )
    assert "overlay2 (5.10, emulated), overlay2 (6.12, emulated)" in readme


def test_one_kernel_only_lists_nothing(tmp_path):
    run(tmp_path, "overlay2", new_file(8 * KiB), K612, True, "space")
    run(tmp_path, "vfs", new_file(64 * MiB), K618, False, "space")  # another driver, another kernel
    ax = axis(tmp_path)
    assert ax["claims"] == [] and ax["changes"] == []
    assert "No claim × driver here is measured on more than one kernel." in kernels.markdown(ax)


def test_emulated_against_native_timing_is_not_a_kernel_difference(tmp_path):
    run(tmp_path, "overlay2", creation(10, 11), K618, False, "creation")
    run(tmp_path, "overlay2", creation(100, 900), K612, True, "creation")  # TCG: 9× slower to 1 GiB
    run(tmp_path, "overlay2", new_file(8 * KiB), K618, False, "space")
    run(tmp_path, "overlay2", new_file(64 * MiB), K612, True, "space")
    ax = axis(tmp_path)
    kinds = {c["claim"]: c for c in ax["changes"]}
    timing = kinds["create-free"]
    assert timing["timing"] is True and timing["kind"] == "emulation"
    assert "not the kernel" in timing["note"]
    assert {timing["a"]["verdict"], timing["b"]["verdict"]} == {"holds", "fails"}
    assert "9×" in timing["text"]  # the emulated ratio, with the medians it divides
    space = kinds["customize-new-file"]  # a size compares across emulation: a kernel difference
    assert space["timing"] is False and space["kind"] == "kernel" and "comparable" in space["note"]
    md = kernels.markdown(ax)
    kern, emu = md.split("**Emulated against native timing (not a kernel difference)**")
    assert "`customize-new-file`" in kern and "`create-free`" not in kern
    assert "`create-free`" in emu


def test_compare_pairs_kernels_and_never_pools_them(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for tree, slow612 in ((a, 1.0), (b, 3.0)):  # only 6.12 got slower from A to B
        run(tree, "overlay2", creation(1.0, 1.0), K510, True, "creation")
        run(tree, "overlay2", creation(slow612 * 10, 10), K612, True, "creation")
    rows = [r for r in compare.compare(a, b) if r["params"] == "image_size=1MiB layers=1"]
    by = {(r["kernel_a"], r["kernel_b"]): r for r in rows}
    assert set(by) == {(K510, K510), (K612, K612)}  # per kernel, no 5.10 ↔ 6.12 cross pairs
    assert by[(K510, K510)]["ratio"] == pytest.approx(1.0) and by[(K510, K510)]["mark"] == ""
    assert by[(K612, K612)]["ratio"] == pytest.approx(3.0) and by[(K612, K612)]["mark"] == "+"
    assert by[(K612, K612)]["driver"] == "overlay2 [6.12] (emulated)"
    assert compare.kernels_compared(rows) == "overlay2 (emulated) 5.10 6.12"


def test_compare_names_the_kernels_when_the_trees_have_different_ones(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, "overlay2", creation(1.0, 1.0), K618, False, "creation")
    run(b, "overlay2", creation(2.0, 1.0), K612, False, "creation")
    rows = compare.compare(a, b)
    assert rows and all((r["kernel_a"], r["kernel_b"]) == (K618, K612) for r in rows)
    assert all(r["driver"] == "overlay2 [6.18→6.12]" for r in rows)
    assert compare.kernels_compared(rows) == "overlay2 6.18→6.12"


def test_a_pair_on_different_backing_filesystems_says_it_is_not_the_kernel_alone(tmp_path):
    run(tmp_path, "overlay2", new_file(8 * KiB), K510, True, "space", backing="xfs")
    run(tmp_path, "overlay2", new_file(64 * MiB), K612, True, "space", backing="ext4")
    df = results.load(tmp_path)
    ax = kernels.axis(verdicts.evaluate(catalogue.claims(), df, drivers=[]), kernels.backing_of(df))
    (ch,) = ax["changes"]
    assert (ch["a"]["backing"], ch["b"]["backing"]) == (["xfs"], ["ext4"])
    assert "backing filesystems differ too (xfs against ext4): not the kernel alone" in ch["note"]
    same = axis(tmp_path)["changes"][0]  # without the backing map: nothing claimed about it
    assert "backing" not in same["note"]
