"""Crash safety: a bench run killed with SIGKILL at many points, then `cowlab cleanup`.

Kill points are deterministic: COWLAB_KILLPOINT=name:n makes cowlab SIGKILL itself the n-th time
it reaches a named point (cowlab.base.faults; the points sit in resources, layers, images, backing
and results). After each kill, `cowlab cleanup` must leave no mount, loop device, process
carrying the dead run's COWLAB_OWNER tag, scratch cgroup, journal entry or staging file, and no
file outside the state root may have changed (a sentinel tree beside it is fingerprinted before
and after; the results directory may only gain files). SIGINT and SIGTERM must tear everything
down by themselves and keep the samples measured so far.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import SRC, loops_under, mounts_under
from cowlab import results
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot, resolve_root
from helpers import docker_archive, simple_layer, tree_fingerprint

pytestmark = pytest.mark.root

CREATION = ["bench", "overlay2", "--quick", "--reps", "1", "--workload", "creation"]


def _bench_extra() -> list[str]:
    """--mode primitive / --vm never where this cowlab has them (never engine or VM here)."""
    cp = subprocess.run(
        [sys.executable, "-m", "cowlab", "bench", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    extra = []
    if "--mode" in cp.stdout:
        extra += ["--mode", "primitive"]
    if "--vm" in cp.stdout:
        extra += ["--vm", "never"]
    return extra


@dataclass
class Point:
    id: str
    argv: list[str]
    killpoint: str
    bench: bool = True  # a bench run (gets --out, --mode primitive ...)
    fresh: bool = False  # on a new state root (nothing built yet)
    needs: str = ""  # "density", "xfs": skipped with the reason when missing
    extra_env: dict = field(default_factory=dict)


def _creation(driver="overlay2", *more):
    return ["bench", driver, "--quick", "--reps", "1", "--workload", "creation", *more]


POINTS = [
    # image build (a fresh state root: nothing built yet)
    Point("build: a layer tar in staging", _creation(), "build.staged:1", fresh=True),
    Point("build: 64 MiB layer stored, no manifest", _creation(), "build.layer:2", fresh=True),
    # import / extraction into the driver
    Point("import: extracting the first layer (overlay2)", _creation(), "apply.member:2"),
    Point("import: extracting the 16-layer image (overlay2)", _creation(), "apply.member:40"),
    Point("import: extracting into vfs", _creation("vfs"), "apply.member:3"),
    Point("image import: a layer of a docker-save archive stored", [], "import.layer:2", bench=False),
    # containers and mounts
    Point("mount: journaled, not yet mounted", _creation(), "journal.mount:1"),
    Point("mount: mounted, caller not told", _creation(), "acquired.mount:1"),
    Point("creation loop: 5th container mounted", _creation(), "acquired.mount:5"),
    Point("teardown: unmounted, journal entry left", _creation(), "release.mount:2"),
    Point("teardown: container dir gone, entry left", _creation(), "release.dir:3"),
    Point("between samples", _creation(), "sample:3"),
    Point("vfs: container dir made, copy not started", _creation("vfs"), "acquired.dir:4"),
    Point("container create: mounted (persistent container)", [], "acquired.mount:1", bench=False),
    Point(
        "conformance: second container mounted",
        ["conformance", "--driver", "overlay2", "--case", "basic"],
        "acquired.mount:2",
        bench=False,
    ),
    # space
    Point(
        "space: container mounted",
        ["bench", "overlay2", "--quick", "--reps", "1", "--workload", "space"],
        "acquired.mount:1",
    ),
    # density: readers alive
    Point(
        "density: 8 containers, 7 readers alive, 8th not journaled",
        ["bench", "overlay2", "--quick", "--reps", "1", "--workload", "density"],
        "spawn:9",
        needs="density",
    ),
    Point(
        "density: scratch cgroup made",
        ["bench", "overlay2", "--quick", "--reps", "1", "--workload", "density"],
        "acquired.cgroup:2",
        needs="density",
    ),
    # loop backing (--backing xfs)
    Point(
        "loop: image formatted, no loop device", _creation("overlay2", "--backing", "xfs"), "loop.mkfs:1", needs="xfs"
    ),
    Point(
        "loop: attached, device not journaled",
        _creation("overlay2", "--backing", "xfs"),
        "loop.attached:1",
        needs="xfs",
    ),
    Point(
        "loop: mount journaled, not mounted", _creation("overlay2", "--backing", "xfs"), "journal.mount:1", needs="xfs"
    ),
    Point("loop: container on xfs mounted", _creation("overlay2", "--backing", "xfs"), "acquired.mount:3", needs="xfs"),
    Point(
        "loop: teardown, loop detached, entry left",
        _creation("overlay2", "--backing", "xfs"),
        "release.loop:1",
        needs="xfs",
    ),
]


def _needs(what: str) -> str | None:
    if what == "density":
        try:
            from cowlab.measure.workloads import WORKLOADS
            from cowlab.measure.workloads.density import static_busybox
        except ImportError:
            return "the density workload is not in this cowlab yet"
        if "density" not in WORKLOADS:
            return "the density workload is not registered"
        if not static_busybox():
            return "density needs a static busybox (apt-get install busybox-static)"
    if what == "xfs":
        if not any(os.access(os.path.join(d, "mkfs.xfs"), os.X_OK) for d in ("/sbin", "/usr/sbin")):
            return "mkfs.xfs is not installed (apt-get install xfsprogs)"
        if "xfs" not in Path("/proc/filesystems").read_text():
            return "this kernel has no xfs"
    return None


# --- the lab: a state root, a results dir, and a sentinel tree beside them ------------------------


class Lab:
    def __init__(self, base: Path):
        self.base = base
        self.root = base / "root"
        self.out = base / "results"
        self.aux = base / "aux"  # the test's own files (archives, specs)
        self.cwd = base / "cwd"  # where cowlab runs: nothing may appear here
        for d in (self.out, self.aux, self.cwd):
            d.mkdir(parents=True, exist_ok=True)
        s = base / "sentinel"
        if not s.exists():
            (s / "etc").mkdir(parents=True)
            (s / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
            (s / "data").write_bytes(os.urandom(4096))
            os.symlink("/etc", s / "link-out")
            os.link(s / "data", s / "data-link")
            os.chmod(s / "etc", 0o700)
            os.setxattr(s / "data", "user.sentinel", b"1")
        archive = self.aux / "img.tar"
        if not archive.exists():
            archive.write_bytes(
                docker_archive(
                    [
                        simple_layer({"etc/a": b"1" * 5000}),
                        simple_layer({"etc/b": b"2" * 5000}),
                        simple_layer({"usr/c": b"3" * 5000}),
                    ]
                )
            )
        self.extra = _bench_extra()

    def env(self, killpoint: str | None = None) -> dict:
        e = {
            k: v
            for k, v in os.environ.items()
            if k not in ("COWLAB_ROOT", "COWLAB_KILLPOINT", "COWLAB_FAULTS_TRACE", "COWLAB_DEBUG")
        }
        e["PYTHONPATH"] = str(SRC) + os.pathsep + e.get("PYTHONPATH", "")
        if killpoint:
            e["COWLAB_KILLPOINT"] = killpoint
        return e

    def argv(self, p: Point) -> list[str]:
        base = [sys.executable, "-m", "cowlab", "--root", str(self.root)]
        if p.bench:
            return base + p.argv + ["--out", str(self.out)] + self.extra
        if p.killpoint.startswith("import.layer"):
            return base + ["image", "import", str(self.aux / "img.tar"), "--name", "crash:1"]
        if p.argv:
            return base + p.argv
        # container create: needs an image, built beforehand (without a kill point)
        spec = self.aux / "c.toml"
        spec.write_text('name = "crashc"\n[[layers]]\nops = [{ op = "file", path = "/a", size = 10 }]\n')
        cp = subprocess.run(
            base + ["image", "build", str(spec)],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.cwd,
            timeout=120,
        )
        assert cp.returncode == 0, cp.stderr
        return base + ["container", "create", "crashc", "--driver", "overlay2"]

    def outside(self) -> dict:
        """Everything under base but the state root, results and aux."""
        fp = tree_fingerprint(self.base)
        # (base's own mtime changes when root/ appears: its entries are what is compared)
        return {k: v for k, v in fp.items() if k.split("/")[0] not in (".", "root", "results", "aux")}


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory):
    return Lab(tmp_path_factory.mktemp("crash"))


@pytest.fixture
def lab(shared_lab):
    """The shared lab; after a test, whatever it left (if it failed) is swept away, so one
    failure does not cascade into the next tests."""
    yield shared_lab
    st = StateRoot(shared_lab.root)
    if st.claimed and (os.listdir(st.journal) or mounts_under(shared_lab.base)):
        from cowlab.run import cleanup

        cleanup.sweep(st, everything=True)


def _owner_tags(root: Path) -> set[str]:
    j = root / "journal"
    return {d.name for d in j.iterdir()} if j.exists() else set()


def _tagged(prefixes: set[str]) -> list[tuple[int, str]]:
    """Live processes whose COWLAB_OWNER starts with one of prefixes (zombies are not alive)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        for kv in env:
            if kv.startswith(b"COWLAB_OWNER="):
                v = kv.split(b"=", 1)[1].decode(errors="replace")
                if any(v.startswith(p) for p in prefixes):
                    out.append((int(d), v))
    return out


def _my_cgroup_dirs() -> list[Path]:
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if ctrls in ("memory", ""):
            base = Path("/sys/fs/cgroup") / ("memory" if ctrls == "memory" else "") / path.lstrip("/")
            for cand in (base, Path("/sys/fs/cgroup") / path.lstrip("/")):
                if cand.is_dir():
                    out.append(cand)
    return out


def _cowlab_cgroups(pid: int) -> list[Path]:
    return [p for d in _my_cgroup_dirs() for p in d.glob(f"cowlab-{pid}-*")]


def _check_results(out: Path) -> int:
    """Every samples.jsonl under out loads (a cut last line would be a warning, not a crash);
    returns the number of valid samples."""
    n = 0
    for f in out.rglob("samples.jsonl"):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                assert i == len(lines) - 1, f"{f}: line {i + 1} is not JSON: {line!r}"
                continue
            assert results.validate(rec) is None, (f, line)
            n += 1
        results.read_run(f.parent)
    return n


@pytest.mark.parametrize("p", [pytest.param(p, id=p.id) for p in POINTS])
def test_sigkill_then_cleanup_leaves_nothing(lab, p, tmp_path):
    why = _needs(p.needs) if p.needs else None
    if why:
        pytest.skip(why)
    if p.fresh:  # a state root of its own, so the build really happens
        lab = Lab(tmp_path / "fresh")
    argv = lab.argv(p)
    before = lab.outside()
    results_before = tree_fingerprint(lab.out)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lab.env(p.killpoint), cwd=lab.cwd
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"{p.killpoint} was not reached (exit {proc.returncode}):\n{err[-3000:]}"
    owners = _owner_tags(lab.root)
    if p.bench:  # the dead run's journal is there for cleanup to find
        assert any(o.startswith(f"run-{proc.pid}-") for o in owners), owners

    cp = subprocess.run(
        [sys.executable, "-m", "cowlab", "--root", str(lab.root), "cleanup"],
        capture_output=True,
        text=True,
        env=lab.env(),
        cwd=lab.cwd,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stderr + cp.stdout

    assert mounts_under(lab.base) == [], cp.stdout
    assert loops_under(lab.base) == [], cp.stdout
    assert _tagged({f"run-{proc.pid}-"} | {o for o in owners}) == [], cp.stdout
    assert _cowlab_cgroups(proc.pid) == []
    st = StateRoot(lab.root)
    # (a killed `container create` may leave the persistent driver home with its imported image:
    # that is the persistent store, not a leftover of the dead command)
    store = [x for x in os.listdir(st.store) if x != "persistent"]
    left = {
        "journal": os.listdir(st.journal),
        "tmp": os.listdir(st.tmp),
        "store": store,
        "backings": os.listdir(st.backings),
    }
    assert left == {"journal": [], "tmp": [], "store": [], "backings": []}, (left, cp.stdout)
    assert lab.outside() == before, "a file outside the state root changed"
    files_before = {k: v for k, v in results_before.items() if not stat.S_ISDIR(v[0])}
    after_results = tree_fingerprint(lab.out)  # results may gain files; existing ones stay as they were
    assert {k: after_results.get(k) for k in files_before} == files_before, "an existing result changed"
    _check_results(lab.out)
    # a bench run killed after its run.json appeared is closed by cleanup, never left "running"
    for d in results.run_dirs([lab.out]):
        run = json.loads((d / "run.json").read_text())
        assert run["status"] != "running", (d, "cleanup left the killed run marked running")
        if str((d / "run.json").relative_to(lab.out)) not in results_before:  # this test's run
            # killed mid-run: "killed"; killed in teardown: the status teardown was writing
            assert "cowlab cleanup" in run.get("closed_by_cleanup", ""), run
            assert run["status"] == "killed" or p.killpoint.startswith("release."), run
    # one cleanup was enough: a second finds nothing to do
    from cowlab.run import cleanup

    assert cleanup.sweep(st) == []


def test_results_of_killed_runs_load(shared_lab):
    """What the killed runs above wrote is readable by the one loader: every complete line, a
    cut last line (if any) skipped with a warning; a run killed with SIGKILL is marked "killed"
    by the cleanup that followed, which a reader can tell from "complete"."""
    import warnings

    dirs = results.run_dirs([shared_lab.out])
    if not dirs:
        pytest.skip("no kill test wrote results in this session")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.load([shared_lab.out], include_failed=True)
    assert all("last line" in str(w.message) for w in caught if "samples.jsonl" in str(w.message))
    n = _check_results(shared_lab.out)
    assert len(df) == n
    statuses = {json.loads((d / "run.json").read_text())["status"] for d in dirs}
    assert statuses <= {"killed", "complete", "interrupted"}, statuses
    assert "killed" in statuses


def test_at_least_twenty_kill_points():
    assert len({p.killpoint + " ".join(p.argv) for p in POINTS}) >= 20


def test_killpoint_format():
    from cowlab.base import faults

    assert faults.parse("a:2, b") == {"a": 2, "b": 1}
    for bad in ("a:0", ":3", "a:x"):
        with pytest.raises(ValueError):
            faults.parse(bad)


def test_faults_are_off_by_default():
    cp = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cowlab.base import faults; print(faults.enabled, faults.point is faults._nothing)",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("COWLAB_")} | {"PYTHONPATH": str(SRC)},
    )
    assert cp.stdout.split() == ["False", "True"], cp.stderr


# --- SIGINT and SIGTERM: torn down by the run itself, samples kept -------------------------------


@pytest.mark.parametrize(
    "sig, workload",
    [(signal.SIGINT, "creation"), (signal.SIGTERM, "creation"), (signal.SIGTERM, "density")],
    ids=["SIGINT", "SIGTERM", "SIGTERM-density"],
)
def test_signal_tears_down_and_keeps_samples(lab, tmp_path, sig, workload):
    if workload == "density":
        why = _needs("density")
        if why:
            pytest.skip(why)
    trace = tmp_path / "trace"
    out = tmp_path / "results"
    env = lab.env()
    env["COWLAB_FAULTS_TRACE"] = str(trace)
    # creation: enough repetitions that the run is still busy when the signal lands (with 3, a
    # warm machine finished the whole grid between the 4th sample and the signal)
    reps = "100" if workload == "creation" else "3"
    argv = [
        sys.executable,
        "-m",
        "cowlab",
        "--root",
        str(lab.root),
        "bench",
        "overlay2",
        "--quick",
        "--reps",
        reps,
        "--workload",
        workload,
        "--out",
        str(out),
    ] + lab.extra

    # As a foreground run at a terminal gets it: SIGINT at its default and not blocked, even when
    # this test runs from a background job (whose children start with SIGINT ignored, so Python
    # installs no KeyboardInterrupt handler) or from a thread that has it blocked (the mask is
    # inherited): either way Ctrl-C would never reach cowlab.
    def foreground():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=lab.cwd, preexec_fn=foreground
    )
    # creation: after a few samples; density: while 8 readers are alive (the 6th reader spawned)
    want = ("sample", 4) if workload == "creation" else ("spawn", 6)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if trace.exists() and any(line.split() == [want[0], str(want[1])] for line in trace.read_text().splitlines()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {want}: {proc.stderr.read()[-2000:]}"
    pid = proc.pid
    with open(f"/proc/{pid}/status") as f:  # (for the message below, if the signal is lost)
        masks = [line.strip() for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (masks, err[-3000:])
    assert "Traceback" not in err
    assert "interrupted" in err
    assert mounts_under(lab.base) == [] and loops_under(lab.base) == []
    assert _tagged({f"run-{pid}-"}) == []
    assert _cowlab_cgroups(pid) == []
    st = StateRoot(lab.root)
    assert os.listdir(st.journal) == [] and os.listdir(st.tmp) == []
    assert [x for x in os.listdir(st.store) if x != "persistent"] == []  # (persistent: container create)
    (run_dir,) = [d.parent for d in out.rglob("run.json")]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted"
    n = _check_results(out)
    assert n >= (4 if workload == "creation" else 1), n
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    assert all(json.loads(x) for x in lines)  # every line complete: nothing cut by the signal


# --- never delete through a mount; never take a system directory as state root -------------------


def test_safe_rmtree_refuses_a_tree_with_a_mount_below(tmp_path):
    root = tmp_path / "root"
    victim = root / "store" / "x"
    (victim / "m").mkdir(parents=True)
    src = tmp_path / "precious"
    src.mkdir()
    (src / "data").write_text("keep me")
    sysutil.mount(str(src), victim / "m", "", "", 4096)  # MS_BIND
    try:
        with pytest.raises(CowlabError, match="is still mounted"):
            sysutil.safe_rmtree(victim, root)
        with pytest.raises(CowlabError, match="is still mounted"):
            sysutil.safe_rmtree(root / "store", root)
        assert (src / "data").read_text() == "keep me"
    finally:
        sysutil.umount(victim / "m")
    sysutil.safe_rmtree(victim, root)
    assert not victim.exists() and (src / "data").read_text() == "keep me"


def test_safe_rmtree_refuses_a_mount_reached_through_a_symlink(tmp_path):
    """The state root given through a symlink (/var/lib/cowlab → /data/cowlab): mountinfo shows
    the real path, so a check on the path as given would miss the mount and delete through it."""
    real = tmp_path / "real"
    (real / "store" / "x" / "m").mkdir(parents=True)
    link = tmp_path / "link"
    os.symlink(real, link)
    src = tmp_path / "precious"
    src.mkdir()
    (src / "data").write_text("keep me")
    sysutil.mount(str(src), real / "store" / "x" / "m", "", "", 4096)
    try:
        with pytest.raises(CowlabError, match="is still mounted"):
            sysutil.safe_rmtree(link / "store" / "x", link)
        assert (src / "data").read_text() == "keep me"
    finally:
        sysutil.umount(real / "store" / "x" / "m")


def test_safe_rmtree_stays_inside(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "other").mkdir()
    for bad in (tmp_path / "other", tmp_path / "root", tmp_path / "root" / ".." / "other"):
        with pytest.raises(CowlabError, match="outside"):
            sysutil.safe_rmtree(bad, tmp_path / "root")
    assert (tmp_path / "other").is_dir()


@pytest.mark.parametrize("bad", ["/", "/home", "/usr", "/usr/", "//usr", "/usr/../usr"])
def test_cleanup_all_refuses_system_roots(bad):
    with pytest.raises(CowlabError, match="refusing state root"):
        resolve_root(bad)
    cp = subprocess.run(
        [sys.executable, "-m", "cowlab", "--root", bad, "cleanup", "--all"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert cp.returncode == 1 and "refusing state root" in cp.stderr and "Traceback" not in cp.stderr


def test_cleanup_with_state_root_through_a_symlink(tmp_path):
    """A command killed while its state root was given through a symlink is cleaned up too
    (mounts and loop files are found by their real paths)."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    lab = Lab(tmp_path / "lab")
    lab.root = link / "root"
    p = Point("container create through a symlinked root", [], "acquired.mount:1", bench=False)
    cp = subprocess.run(lab.argv(p), capture_output=True, text=True, env=lab.env(p.killpoint), timeout=600)
    assert cp.returncode == -signal.SIGKILL, cp.stderr[-2000:]
    assert mounts_under(real), "the kill point should have left a mount"
    cp = subprocess.run(
        [sys.executable, "-m", "cowlab", "--root", str(link / "root"), "cleanup"],
        capture_output=True,
        text=True,
        env=lab.env(),
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr
    assert mounts_under(real) == [] and loops_under(real) == []
    assert os.listdir(real / "root" / "journal") == []
