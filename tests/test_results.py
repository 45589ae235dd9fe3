"""Results: RunWriter's files, validate(), and load() into a DataFrame that never raises on bad
lines."""

from __future__ import annotations

import json
import math
import platform
import socket
import warnings

import pytest

from cowlab import results
from cowlab.base import provenance
from cowlab.results import RunWriter, Sample


def _prov(**extra) -> dict:
    p = provenance.collect(["cowlab", "test"], tools=[])
    p.update(
        driver="vfs",
        quick=True,
        harness="cowlab bench",
        driver_metadata={"backing": "host", "backing_fs": "ext4", "backing_mount_options": "rw"},
    )
    p.update(extra)
    return p


def make_run(out, run_id="r1", samples=None, status="complete", **prov):
    w = RunWriter(out, run_id, _prov(**prov))
    samples = (
        samples
        if samples is not None
        else [
            Sample("create_seconds", 0.01 * (i + 1), "s", {"image_size_bytes": 1 << 20, "layers": L}, i)
            for L in (1, 16)
            for i in range(3)
        ]
    )
    for s in samples:
        w.add(s, "vfs", "creation")
    w.close(status)
    return w


def records(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_runwriter_layout(tmp_path):
    w = make_run(tmp_path / "out")
    d = tmp_path / "out" / socket.gethostname() / "r1"
    assert w.dir == d
    assert sorted(p.name for p in d.iterdir()) == ["run.json", "samples.jsonl"]
    run = json.loads((d / "run.json").read_text())
    assert run["schema_version"] == results.SCHEMA_VERSION and run["run_id"] == "r1"
    assert run["status"] == "complete" and run["counts"] == {"ok": 6, "failed": 0, "skipped": 0}
    assert run["kernel"] == platform.release() and run["hostname"] == socket.gethostname()
    assert run["virtualization"] in ("none", "hw", "tcg")
    recs = records(d)
    assert len(recs) == 6
    for r in recs:
        assert results.validate(r) is None, r
        assert r["run_id"] == "r1" and r["driver"] == "vfs" and r["workload"] == "creation"
    assert [r["repetition"] for r in recs] == [0, 1, 2, 0, 1, 2]


def test_runwriter_refuses_existing_dir(tmp_path):
    make_run(tmp_path)
    with pytest.raises(FileExistsError):
        make_run(tmp_path)


def test_runwriter_status_running_until_closed(tmp_path):
    w = RunWriter(tmp_path, "r", _prov())
    w.add(Sample("m", 1.0, "s"), "vfs", "creation")
    run = json.loads((w.dir / "run.json").read_text())
    assert run["status"] == "running"
    assert len(records(w.dir)) == 1  # flushed as measured
    w.close("interrupted")
    assert json.loads((w.dir / "run.json").read_text())["status"] == "interrupted"


def test_raw_path(tmp_path):
    w = make_run(tmp_path)
    p = w.raw_path("fio.json")
    assert p == w.dir / "raw" / "fio.json" and p.parent.is_dir()


def test_sample_unit_checked():
    with pytest.raises(ValueError):
        Sample("m", 1.0, "ms")


def test_load_dataframe(tmp_path):
    make_run(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = results.load(tmp_path)
    assert len(df) == 6
    for col in (
        "image_size_bytes",
        "layers",
        "value",
        "metric",
        "driver",
        "kernel",
        "hostname",
        "virtualization",
        "backing_fs",
        "cowlab_version",
        "run_dir",
    ):
        assert col in df.columns, col
    assert set(df["layers"]) == {1, 16}
    assert (df["kernel"] == platform.release()).all()
    assert (df["hostname"] == socket.gethostname()).all()
    assert (df["backing_fs"] == "ext4").all()
    assert sorted(df["value"].round(6)) == sorted([0.01, 0.02, 0.03] * 2)
    # a run dir, a list of dirs and the parent all load the same rows
    assert len(results.load([tmp_path / socket.gethostname() / "r1"])) == 6


def test_load_several_runs(tmp_path):
    make_run(tmp_path, "a")
    make_run(tmp_path, "b", samples=[Sample("space_bytes", 4096, "B", {"event": "create"})])
    df = results.load(tmp_path)
    assert sorted(df["run_id"].unique()) == ["a", "b"]
    assert len(df) == 7
    assert df[df["run_id"] == "b"]["event"].tolist() == ["create"]


def test_load_empty(tmp_path):
    df = results.load(tmp_path)
    assert len(df) == 0 and "value" in df.columns and "kernel" in df.columns


def _append(run_dir, text: str):
    with open(run_dir / "samples.jsonl", "a") as f:
        f.write(text)


def test_truncated_last_line_is_a_warning(tmp_path):
    w = make_run(tmp_path)
    line = json.dumps(records(w.dir)[0])
    _append(w.dir, line[: len(line) // 2])  # a crash mid-write: no newline, half an object
    with pytest.warns(UserWarning, match="last line"):
        df = results.load(tmp_path)
    assert len(df) == 6


def test_truncated_middle_line_is_a_warning(tmp_path):
    w = make_run(tmp_path)
    lines = (w.dir / "samples.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (w.dir / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="line 3"):
        df = results.load(tmp_path)
    assert len(df) == 5


def _valid(**over):
    rec = {
        "schema_version": 1,
        "run_id": "r1",
        "driver": "vfs",
        "mode": "primitive",
        "workload": "creation",
        "metric": "create_seconds",
        "value": 0.5,
        "unit": "s",
        "repetition": 0,
        "params": {},
        "status": "ok",
    }
    rec.update(over)
    return rec


BREAKING = {
    "missing field": {k: v for k, v in _valid().items() if k != "metric"},
    "params not a dict": _valid(params=[1]),
    "bool repetition": _valid(repetition=True),
    "str repetition": _valid(repetition="0"),
    "bad status": _valid(status="great"),
    "bad unit": _valid(unit="ms"),
    "ok without value": _valid(value=None),
    "ok with string value": _valid(value="0.5"),
    "ok with bool value": _valid(value=True),
    "array": [1, 2, 3],
    "string": "hello",
}


@pytest.mark.parametrize("case", sorted(BREAKING))
def test_schema_breaking_record_is_ignored(tmp_path, case):
    w = make_run(tmp_path)
    assert results.validate(BREAKING[case]) is not None
    _append(w.dir, json.dumps(BREAKING[case]) + "\n")
    with pytest.warns(UserWarning, match="breaks the schema"):
        df = results.load(tmp_path)
    assert len(df) == 6


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_ignored(tmp_path, text):
    w = make_run(tmp_path)
    _append(w.dir, json.dumps(_valid()).replace('"value": 0.5', f'"value": {text}') + "\n")
    with pytest.warns(UserWarning, match="finite"):
        df = results.load(tmp_path)
    assert len(df) == 6 and df["value"].map(math.isfinite).all()


def test_validate_accepts():
    assert results.validate(_valid()) is None
    assert results.validate(_valid(value=3)) is None
    assert results.validate(_valid(status="failed", value=None, error="boom")) is None
    assert results.validate(_valid(status="skipped", value=None)) is None


@pytest.mark.parametrize("digits", [400, 5000])
def test_huge_integer_value_is_ignored(tmp_path, digits):
    w = make_run(tmp_path)
    _append(w.dir, json.dumps(_valid()).replace('"value": 0.5', '"value": ' + "9" * digits) + "\n")
    with pytest.warns(UserWarning):
        df = results.load(tmp_path)
    assert len(df) == 6


def test_failed_and_skipped_excluded_unless_asked(tmp_path):
    make_run(
        tmp_path,
        samples=[
            Sample("create_seconds", 0.1, "s", {"layers": 1}),
            Sample("create_seconds", None, "s", {"layers": 2}, status="failed", error="boom"),
            Sample("workload", None, "count", {}, status="skipped", error="lacks bare_mount"),
        ],
    )
    df = results.load(tmp_path)
    assert df["status"].tolist() == ["ok"] and len(df) == 1
    full = results.load(tmp_path, include_failed=True)
    assert sorted(full["status"]) == ["failed", "ok", "skipped"]
    assert full[full["status"] == "failed"]["error"].tolist() == ["boom"]
    run = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert run["counts"] == {"ok": 1, "failed": 1, "skipped": 1}


def test_param_wins_over_run_provenance(tmp_path):
    make_run(
        tmp_path,
        samples=[Sample("import_seconds", 0.1, "s", {"backing_fs": "xfs"}), Sample("import_seconds", 0.2, "s", {})],
    )
    df = results.load(tmp_path).sort_values("value")
    assert df["backing_fs"].tolist() == ["xfs", "ext4"]


def test_missing_results_dir_warns(tmp_path):
    with pytest.warns(UserWarning):
        df = results.load(tmp_path / "nope")
    assert len(df) == 0
