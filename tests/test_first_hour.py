"""The first hour of a new user (issue 14): sudo leaving nothing root-owned in the checkout, a
summary that fits a screen, one unit formatter, a shell-safe `container create`/`rm`, disk given
back (`image prune`, `cleanup --all --images`, `status`), persistent storage released with its
last container, results apart from the committed runs, and the small traps (markup eating
`[vm]`, a chroot without a root mount, the notebooks' TCP warnings)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from conftest import SRC, loops_under, mounts_under, run_cli
from cowlab.base import sysutil, units
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources
from cowlab.base.state import StateRoot
from cowlab.report import summary
from cowlab.run import holdings

REPO = SRC.parent
SPEC = """\
name = "demo"
seed = 1
[[layers]]
ops = [ { op = "file", path = "/etc/hello", size = "1KiB" } ]
"""
MiB = 1 << 20


# --- one formatter -------------------------------------------------------------------------------
def test_units_read_the_same_everywhere():
    assert units.human_bytes(65548 * 1024) == "64 MiB"  # the space headline's "65548 KiB"
    assert units.human_bytes(64 * MiB) == "64 MiB"  # the table's "64.0 MiB"
    assert units.human_value(1.75e9, "B/s") == "1.63 GiB/s"  # fio's "1.75e+09" with no unit
    assert units.human_seconds(0.00071) == "0.71 ms" and units.human_seconds(112) == "1 min 52 s"
    assert units.human_params({"image_size_bytes": 1 << 30, "layers": 16}) == "image_size=1 GiB layers=16"
    from cowlab.report import figures

    assert figures.human_bytes is units.human_bytes and figures.human_x is units.human_param


def test_no_second_byte_formatter():
    """Every output formats through cowlab.base.units: no other module defines its own."""
    offenders = []
    for f in (SRC / "cowlab").rglob("*.py"):
        if f.name == "units.py":
            continue
        for m in re.finditer(r"^\s*def (_?human\w*|_fmt_bytes|_val)\(", f.read_text(), re.M):
            offenders.append(f"{f.relative_to(SRC)}: {m.group(1)}")
    assert offenders == []


# --- the end-of-run summary --------------------------------------------------------------------
def _rec(workload, metric, value, unit, params, rep=0, status="ok", error=""):
    r = {
        "schema_version": 1,
        "run_id": "r",
        "driver": "overlay2",
        "mode": "primitive",
        "workload": workload,
        "metric": metric,
        "value": value,
        "unit": unit,
        "repetition": rep,
        "params": params,
        "status": status,
    }
    if error:
        r["error"] = error
    return r


def quick_run_records() -> list[dict]:
    """A quick overlay2 run's shape: every workload, several repetitions, the noisy params."""
    out = []
    for rep in range(5):
        for size, layers in ((MiB, 1), (64 * MiB, 1), (MiB, 16)):
            p = {"image_size_bytes": size, "layers": layers}
            out += [
                _rec("creation", "create_seconds", 6e-4, "s", p, rep),
                _rec("creation", "remove_seconds", 5e-4, "s", p, rep),
                _rec("mount_floor", "container_floor_seconds", 8e-4, "s", p, rep),
                _rec("mount_floor", "container_floor_libc_seconds", 7.8e-4, "s", p, rep),
                _rec("mount_floor", "cowlab_container_seconds", 1.0e-3, "s", p, rep),
            ]
        for ev, v in (("create", 24576), ("write_new_1KiB", 4096), ("append_1KiB_to_64MiB", 65548 * 1024)):
            out.append(_rec("space", "space_bytes", v, "B", {"event": ev, "big_file_bytes": 64 * MiB}, rep))
        for fs, t in (("ext4", 0.086), ("xfs", 3e-4), ("btrfs", 4e-4)):
            for size in (4096, MiB, 64 * MiB):
                for op in ("append_1B", "chmod", "truncate", "write_middle_4B", "open_rdwr", "second_append_1B"):
                    for cache in ("cold", "warm"):
                        for meta in (None, True, False) if op == "chmod" else (None,):
                            out.append(
                                _rec(
                                    "copyup",
                                    "copyup_seconds",
                                    t,
                                    "s",
                                    {
                                        "cache": cache,
                                        "file_size_bytes": size,
                                        "backing_fs": fs,
                                        "metacopy": meta,
                                        "op": op,
                                    },
                                    rep,
                                )
                            )
        for n in (1, 8, 32):
            for kind in ("hit", "miss", "scan", "exec"):
                for cache in ("cold", "warm"):
                    out.append(
                        _rec(
                            "lookup",
                            "lookup_seconds",
                            0.004 * n if cache == "cold" else 6e-5,
                            "s",
                            {"layers": n, "cache": cache, "path_dirs": 32, "kind": kind},
                            rep,
                        )
                    )
    for k in (1, 8):
        p = {"set_bytes": 64 * MiB, "containers": k, "files": 200}
        out += [_rec("density", "page_cache_bytes", 71e6, "B", p), _rec("density", "dentry_count", 500 * k, "count", p)]
    for job in ("first-write", "rand-read-4k", "rand-write-4k", "seq-read-1m", "seq-write-1m"):
        for target in ("container", "volume"):
            p = {"fio_version": "fio-3.33", "target": target, "direction": "write", "size_bytes": 64 * MiB, "job": job}
            out += [_rec("io", "fio_bw_bytes_per_s", 1.75e9, "B/s", p), _rec("io", "fio_iops", 1.2e4, "1/s", p)]
    out.append(
        _rec(
            "import",
            "import_seconds",
            0.04,
            "s",
            {"image": "creation-1048576B-1L", "layers": 1, "content_bytes": 1048640, "backing_fs": "ext4"},
        )
    )
    out.append(_rec("inodes", "inodes_used", 1220, "count", {"event": "import", "layers": 4}))
    out.append(_rec("inodes", "inodes_used", 5, "count", {"event": "create", "layers": 4}))
    out.append(
        _rec("btrfs_chunks", "workload", None, "count", {}, status="skipped", error="overlay2 lacks btrfs_chunks")
    )
    return out


def _render(fn, *a, width=80) -> list[str]:
    c = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    fn(c, *a)
    return c.export_text().splitlines()


def test_summary_fits_one_screen_with_findings_and_claims():
    recs = quick_run_records()
    lines = _render(
        summary.render_findings,
        recs,
        "overlay2, quick grid",
        "results/local/h/r/summary.txt",
        "cowlab show results/local/h/r",
    )
    text = " ".join("\n".join(lines).split())  # findings wrap: compare words
    assert len(lines) <= 40, "\n".join(lines)
    assert max(map(len, lines)) <= 80 and not any(line.endswith(" ") for line in lines)
    assert "'free'" in text and "copy-up" in text and "volumes" in text  # the claims answered
    assert "86 ms on ext4" in text and "0.3 ms on xfs" in text  # the finding a user came for
    assert "64 MiB" in text and "65548 KiB" not in text and "e+09" not in text
    assert "1.63 GiB/s" in text
    assert "1.25× at 1 layer" in text and "a whole container's life in cowlab" in text  # overhead, explained
    assert "cowlab show results/local/h/r" in text and "summary.txt" in text


def test_full_table_shows_params_only_where_they_vary():
    recs = quick_run_records()
    text = "\n".join(_render(summary.render_table, recs, width=100))
    assert "metacopy=None" not in text and "content=1048640" not in text and "content=1 MiB" in text
    assert "fio_version" not in text.split("io (")[1].split("\n")[1]  # the same in every io row: said once
    assert "io (fio_version=fio-3.33" in text
    rows, fixed = summary.rows(recs)
    assert fixed["space"] == {"big_file_bytes": 64 * MiB}
    assert all(set(r.params) <= {"event"} for r in rows if r.workload == "space")


def test_overhead_is_cowlab_over_the_floor_and_the_floor_is_checked_against_libc():
    recs = quick_run_records()
    assert summary.overhead(recs)[1] == pytest.approx((1.25, 1.0e-3, 8e-4))
    assert summary.floor_check(recs)[16] == pytest.approx(8e-4 / 7.8e-4)
    no_floor = [r for r in recs if r["metric"] != "container_floor_seconds"]
    assert summary.overhead(no_floor) == {} and summary.floor_check(no_floor) == {}


def test_show_prints_a_run_again_at_the_terminal_width(tmp_path):
    d = tmp_path / "results" / "local" / "h" / "20260101T000000Z-overlay2-abcd"
    d.mkdir(parents=True)
    (d / "run.json").write_text(
        json.dumps(
            {
                "run_id": d.name,
                "driver": "overlay2",
                "quick": True,
                "status": "complete",
                "hostname": "h",
                "started": 0,
                "ended": 112,
            }
        )
    )
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in quick_run_records()))
    cp = run_cli("show", d.name, cwd=tmp_path, env={"COLUMNS": "80"})
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and "complete in 1 min 52 s" in lines[0]
    assert any("copyup_seconds" in line for line in lines)
    cp = run_cli("show", "nosuchrun", cwd=tmp_path)
    assert cp.returncode == 1 and "no run 'nosuchrun'" in cp.stderr


# --- journal, lazy release, mounts ------------------------------------------------------------------------
def test_a_torn_journal_entry_names_nothing_and_is_dropped(state):
    res = Resources.for_run(state)
    h = res.add("file", path=str(state.tmp / "x"))
    (res.dir / "00000005.json").write_text("")  # killed between create and write
    (res.dir / "00000006.json").write_text('{"kind": "fi')  # ... or mid-write
    again = Resources(state, res.owner, claim=False)
    assert [x.seq for x in again._live] == [h.seq]
    assert not (res.dir / "00000005.json").exists() and not (res.dir / "00000006.json").exists()
    assert again.close() == []


@pytest.mark.root
def test_a_lazy_release_unmounts_now_and_deletes_later_and_a_crash_in_between_loses_nothing(state):
    res = Resources.for_run(state)
    cdir = state.store / "c"
    (cdir / "merged").mkdir(parents=True)
    (cdir / "diff" / "f").mkdir(parents=True)
    h = res.acquire(
        "mount", lambda: sysutil.mount("tmpfs", cdir / "merged", "tmpfs"), target=str(cdir / "merged"), dir=str(cdir)
    )
    res.release(h, lazy=True)
    assert not sysutil.is_mountpoint(cdir / "merged") and cdir.exists() and h.path.exists()
    # killed here: the entry is still there, and replaying it (cleanup) finishes the release
    Resources.open(state, res.owner).close()
    assert not cdir.exists() and not h.path.exists()
    res.forget_spent()  # the process itself, had it lived: nothing left to do, no error
    assert res.close() == []


@pytest.mark.root
def test_a_tree_entry_covers_what_is_mounted_below_it(state):
    """A bench's containers: one "tree" entry, none per container; after a crash the tree's
    releaser finds their mounts and directories."""
    res = Resources.for_run(state)
    tree = state.store / "containers"
    t = res.acquire("tree", tree.mkdir, path=str(tree))
    for name in ("a", "b"):
        m = tree / name / "merged"
        m.mkdir(parents=True)
        res.acquire(
            "mount", lambda m=m: sysutil.mount("tmpfs", m, "tmpfs"), target=str(m), dir=str(m.parent), covered_by=t
        )
    assert sorted(p.name for p in res.dir.glob("0*.json")) == [t.path.name]  # one entry written
    with pytest.raises(ValueError):
        res.add("mount", target="/x", covered_by=res.add("file", path=str(state.tmp / "f")))
    Resources.open(state, res.owner).close()  # as cleanup after a kill
    assert not tree.exists() and mounts_under(state.path) == []
    assert res.close() == []


@pytest.mark.root
def test_safe_rmtree_never_enters_a_mount(state):
    """rmdir first: the kernel says EBUSY for a mountpoint before it looks inside."""
    top = state.store / "t"
    m = top / "a" / "m"
    m.mkdir(parents=True)
    (top / "a" / "file").write_text("x")
    sysutil.mount("tmpfs", m, "tmpfs")
    try:
        (m / "precious").write_text("keep")
        with pytest.raises(CowlabError, match="still mounted"):
            sysutil.safe_rmtree(top, state.path)
        assert (m / "precious").read_text() == "keep"
    finally:
        sysutil.umount(m)
    sysutil.safe_rmtree(top, state.path)
    assert not top.exists()
    with pytest.raises(CowlabError, match="outside"):
        sysutil.safe_rmtree("/etc", state.path)


def test_mount_of_without_a_covering_mount_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(
        sysutil,
        "mountinfo",
        lambda path="": [sysutil.MountEntry(1, 0, "/", "/elsewhere", "rw", "ext4", "/dev/x", "rw")],
    )
    with pytest.raises(CowlabError, match="not a mount point"):
        sysutil.mount_of("/work")


def test_holders_finds_a_shell_sitting_inside(tmp_path):
    inside = tmp_path / "mnt" / "sub"
    inside.mkdir(parents=True)
    p = subprocess.Popen(["sleep", "30"], cwd=inside)
    try:
        hs = sysutil.holders(tmp_path / "mnt")
        assert (p.pid, "sleep", "cwd") in hs
        assert f"pid {p.pid} (sleep: cwd)" in sysutil.describe_holders(tmp_path / "mnt")
    finally:
        p.kill()
        p.wait()


# --- container create / rm for shell users ---------------------------------------------------------
@pytest.mark.root
def test_container_idiom_fails_safely_and_rm_says_who_holds_it(tmp_path, root_dir):
    spec = tmp_path / "demo.toml"
    spec.write_text(SPEC)
    assert run_cli("image", "build", str(spec), root=root_dir).returncode == 0
    # A failed create: non-zero and nothing on stdout, so `mnt=$(...) && cd "$mnt"` stops.
    sh = f'mnt=$({sys.executable} -m cowlab --root {root_dir} container create nosuch --driver overlay2) && cd "$mnt" && echo IN'
    cp = subprocess.run(
        ["bash", "-c", sh], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}, cwd=tmp_path
    )
    assert cp.returncode != 0 and "IN" not in cp.stdout and "no image 'nosuch'" in cp.stderr
    cp = run_cli("container", "create", "demo", "--driver", "overlay2", root=root_dir)
    assert cp.returncode == 0, cp.stderr
    mnt = cp.stdout.strip()
    assert "\n" not in mnt and Path(mnt).is_dir()
    cid = cp.stderr.split("created ", 1)[1].split()[0]
    # From inside the container (the shell did `cd "$mnt"`): refused at once, nothing released.
    cp = run_cli("container", "rm", cid, root=root_dir, cwd=mnt)
    assert cp.returncode == 1 and "your working directory" in cp.stderr and "cd out of it" in cp.stderr
    assert mounts_under(mnt) == [mnt]
    # Another process inside: named by pid, without fuser.
    p = subprocess.Popen(["sleep", "30"], cwd=mnt)
    try:
        cp = run_cli("container", "rm", cid, root=root_dir)
        assert cp.returncode == 1 and f"pid {p.pid} (sleep: cwd)" in cp.stderr and "fuser" not in cp.stderr
    finally:
        p.kill()
        p.wait()
    # cleanup says what it keeps and why.
    cp = run_cli("cleanup", root=root_dir)
    assert cp.returncode == 0 and f"kept container {cid}" in cp.stdout and "still registered" in cp.stdout
    assert run_cli("container", "rm", cid, root=root_dir).returncode == 0
    assert mounts_under(root_dir) == []


@pytest.mark.root
def test_quick_bench_then_one_command_empties_the_state_root(tmp_path, root_dir):
    out = tmp_path / "results"
    cp = run_cli(
        "bench",
        "overlay2",
        "--quick",
        "--reps",
        "1",
        "--workload",
        "creation",
        "--workload",
        "mount_floor",
        "--mode",
        "primitive",
        "--vm",
        "never",
        "--out",
        str(out),
        root=root_dir,
        env={"COLUMNS": "80"},
    )
    assert cp.returncode == 0, cp.stderr
    assert len(cp.stdout.splitlines()) <= 40 and "print it again: cowlab show" in cp.stdout
    assert "harness overhead" in cp.stdout
    run_dir = next(out.glob("*/*/samples.jsonl")).parent
    assert (run_dir / "summary.txt").exists()
    recs = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    # the floor and create+remove timed alternately, as many of each, at every grid point
    got = {
        m: sorted((r["params"]["layers"], r["repetition"]) for r in recs if r["metric"] == m)
        for m in ("cowlab_container_seconds", "container_floor_seconds", "container_floor_libc_seconds")
    }
    assert got["cowlab_container_seconds"] and len(set(map(tuple, got.values()))) == 1, got
    cp = run_cli("status", root=root_dir, env={"COLUMNS": "200"})
    assert cp.returncode == 0 and "images" in cp.stdout and "image prune" in cp.stdout
    before = sysutil.disk_usage(root_dir)
    assert before > 2 * MiB  # the quick grid's images (1 and 64 MiB of layer tars)
    cp = run_cli("cleanup", "--all", "--images", root=root_dir)
    assert cp.returncode == 0, cp.stderr
    assert "removed image" in cp.stdout and "freed" in cp.stdout
    assert sysutil.disk_usage(root_dir) < 256 << 10  # a few empty directories and the marker
    assert os.listdir(root_dir / "images") == [] and os.listdir(root_dir / "layers") == []
    assert os.listdir(root_dir / "store") == [] and os.listdir(root_dir / "journal") == []


@pytest.mark.root
def test_persistent_btrfs_goes_with_its_last_container(tmp_path, root_dir):
    from cowlab.storage import drivers

    p = drivers.get("btrfs").probe()
    if not p.available:
        pytest.skip(f"btrfs unavailable: {p.reason} ({p.hint})")
    spec = tmp_path / "demo.toml"
    spec.write_text(SPEC)
    assert run_cli("image", "build", str(spec), root=root_dir).returncode == 0
    mnts = []
    for _ in range(2):
        cp = run_cli("container", "create", "demo", "--driver", "btrfs", root=root_dir)
        assert cp.returncode == 0, cp.stderr
        mnts.append(cp.stdout.strip())
    st = StateRoot(root_dir)
    assert any(h.what == "backing" for h in holdings.survey(st))
    assert "kept backing loop btrfs" in run_cli("cleanup", root=root_dir).stdout
    cp = run_cli("container", "rm", mnts[0], root=root_dir)
    assert cp.returncode == 0 and "loop filesystem" not in cp.stdout  # the other still needs it
    cp = run_cli("container", "rm", mnts[1], root=root_dir)
    assert cp.returncode == 0 and "removed the persistent btrfs loop filesystem" in cp.stdout
    assert mounts_under(root_dir) == [] and loops_under(root_dir) == []
    assert not any(h.what in ("backing", "service") for h in holdings.survey(st))


# --- sudo: nothing root-owned left in the user's checkout ------------------------------------------
@pytest.mark.root
def test_a_sudo_run_leaves_the_users_results_writable_by_the_user(root_dir):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    uid = gid = 54321  # a user with no passwd entry: nothing on the machine is theirs
    checkout = Path(tempfile.mkdtemp(prefix="cowlab-sudo-", dir="/tmp"))
    try:
        os.chmod(checkout, 0o755)
        (checkout / "results").mkdir()
        os.chown(checkout, uid, gid)
        os.chown(checkout / "results", uid, gid)
        cp = run_cli(
            "bench",
            "overlay2",
            "--quick",
            "--reps",
            "1",
            "--workload",
            "creation",
            "--mode",
            "primitive",
            "--vm",
            "never",
            root=root_dir,
            cwd=checkout,
            env={"SUDO_UID": str(uid), "SUDO_GID": str(gid), "SUDO_USER": "someone"},
        )
        assert cp.returncode == 0, cp.stderr
        made = list((checkout / "results").rglob("*"))
        assert any(p.name == "samples.jsonl" for p in made) and any(p.name == "summary.txt" for p in made)
        assert (checkout / "results" / "local").is_dir()  # the default --out
        assert [str(p) for p in made if os.lstat(p).st_uid != uid] == []
        # ... so the user's next command, without sudo, can write beside them.
        host = next((checkout / "results" / "local").iterdir())
        cp = subprocess.run(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "sh",
                "-c",
                f"touch {host}/next && rm -r {host}",
            ],
            capture_output=True,
            text=True,
        )
        assert cp.returncode == 0, cp.stderr
    finally:
        shutil.rmtree(checkout)


def test_hand_over_does_nothing_without_sudo(tmp_path, monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    f = tmp_path / "x"
    f.write_text("")
    before = os.lstat(f).st_uid
    sysutil.hand_over(f)
    assert os.lstat(f).st_uid == before


# --- results apart from the committed reference runs ----------------------------------------------
def test_user_runs_go_to_git_ignored_results_local(tmp_path):
    from cowlab import results
    from cowlab.cli import bench

    assert bench.LOCAL_RESULTS == "results/local"
    assert [p.default for p in bench.bench.params if p.name == "out"] == ["results/local"]
    assert "results/local/" in (REPO / ".gitignore").read_text().split()
    for where in ("local/h", "h"):
        d = tmp_path / "results" / where / "r1"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"run_id": "r1", "driver": "vfs"}))
        (d / "samples.jsonl").write_text(json.dumps(_rec("creation", "create_seconds", 0.1, "s", {})) + "\n")
    df = results.load(tmp_path / "results")
    assert sorted(df["local"].tolist()) == [False, True]


# --- small traps ----------------------------------------------------------------------------------
def test_drivers_table_keeps_brackets_in_hints(monkeypatch):
    from cowlab.cli import main as cli
    from cowlab.storage import drivers
    from cowlab.storage.drivers.base import Probe

    cls = drivers.get("devicemapper-loop")
    monkeypatch.setattr(cls, "probe", classmethod(lambda c: Probe(False, "no dm", "pip install 'cowlab[vm]'")))
    r = CliRunner().invoke(cli.cli, ["drivers"], terminal_width=200)
    assert r.exit_code == 0 and "cowlab[vm]" in r.output


def test_notebooks_run_without_the_tcp_warning(tmp_path):
    pytest.importorskip("nbclient")
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    f = tmp_path / "t.ipynb"
    nbformat.write(nb, f)
    cp = subprocess.run(
        [sys.executable, "-m", "cowlab.report.notebooks", "run", str(f)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr
    assert "without encryption" not in cp.stderr + cp.stdout and "Parent appears to have exited" not in cp.stderr


def test_engine_mode_summary_stays_on_one_screen():
    recs = quick_run_records()
    for size in (MiB, 64 * MiB):
        p = {"image_size_bytes": size, "layers": 1}
        for m, v in (("create_seconds", 0.03), ("start_seconds", 0.2), ("run_seconds", 0.5), ("remove_seconds", 0.02)):
            recs.append({**_rec("creation", m, v, "s", p), "mode": "engine"})
    lines = _render(summary.render_findings, recs, "overlay2", "summary.txt", "cowlab show x")
    text = "\n".join(lines)
    assert len(lines) <= 40 and "docker create 30 ms" in text and "of which storage 0.1%" in text
    table = "\n".join(_render(summary.render_engine_table, recs, [], "", "overlay2", width=120))
    assert "engine vs storage" in table and "64 MiB" in table


def _noxfile(monkeypatch):
    """noxfile.py loaded with a stand-in for nox (the test venv need not have it)."""
    import importlib.util
    import types

    fake = types.ModuleType("nox")
    fake.options = types.SimpleNamespace()
    fake.session = lambda *a, **kw: a[0] if a and callable(a[0]) else (lambda f: f)
    monkeypatch.setitem(sys.modules, "nox", fake)
    spec = importlib.util.spec_from_file_location("cowlab_noxfile", REPO / "noxfile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.root
def test_nox_sessions_hand_the_checkout_back_and_say_where_cowlab_is(tmp_path, monkeypatch):
    nf = _noxfile(monkeypatch)
    uid = gid = 54322
    co = tmp_path / "checkout"
    (co / ".nox" / "bench-overlay2" / "bin").mkdir(parents=True)
    (co / "src" / "cowlab.egg-info").mkdir(parents=True)
    (co / "src" / "cowlab.egg-info" / "PKG-INFO").write_text("")
    os.chown(co, uid, gid)
    monkeypatch.setattr(nf, "HERE", co)
    monkeypatch.setenv("SUDO_UID", str(uid))
    monkeypatch.setenv("SUDO_GID", str(gid))
    ran = []
    nf._gives_back(lambda session: ran.append(session))("s")
    assert ran == ["s"]
    assert [str(p) for p in co.rglob("*") if os.lstat(p).st_uid != uid] == []
    logged = []
    session = type(
        "S", (), {"bin": str(co / ".nox" / "bench-overlay2" / "bin"), "log": lambda self, m: logged.append(m)}
    )()
    nf._where_cowlab_is(session)
    assert "bench-overlay2/bin/cowlab" in logged[0] and "nox -s cowlab" in logged[0]
    assert callable(nf.cowlab)  # `nox -s cowlab -- ARGS`
