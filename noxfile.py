"""cowlab's sessions. `nox -l` lists them; arguments after `--` go to the command underneath.

Works with Debian 12's own nox (2022.11): `apt install nox`, then `sudo nox -s bench-overlay2`.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import nox

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "src"))
from cowlab.report.places import bench_places  # noqa: E402  (where runs and reports land; stdlib only)
from cowlab.storage.drivers import DRIVERS, provision_script  # noqa: E402  (the registry; stdlib only

# One session per backend of the driver registry; each is the same thin layer over `cowlab bench`.
BACKENDS = list(DRIVERS)

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]")


def _give_back() -> None:
    """Under sudo: hand what the session wrote in the checkout (.nox/, src/*.egg-info,
    __pycache__/, results/local/...) back to the user who ran sudo, so that the README's next
    command without sudo (`nox -s notebooks`) can write there. Only files root owns, only in a
    checkout that user owns, never across a mount."""
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if os.geteuid() != 0 or not uid.isdigit() or uid == "0" or os.stat(HERE).st_uid != int(uid):
        return
    who = (int(uid), int(gid) if gid.isdigit() else int(uid))
    dev = os.stat(HERE).st_dev
    for root, dirs, files in os.walk(HERE):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(root, d)).st_dev == dev]
        for path in [root, *(os.path.join(root, n) for n in dirs + files)]:
            try:
                if os.lstat(path).st_uid == 0:
                    os.lchown(path, *who)
            except FileNotFoundError:
                pass


def _gives_back(fn):
    @functools.wraps(fn)
    def session_fn(session):
        try:
            fn(session)
        finally:
            _give_back()

    return session_fn


def _where_cowlab_is(session) -> None:
    exe = Path(session.bin) / "cowlab"
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    session.log(
        f"the cowlab command of this session: {exe} (e.g. `sudo {exe} status`), or `sudo nox -s cowlab -- ARGS`"
    )


def _provision(session, backend: str) -> None:
    """Install what the backend needs (as root), or stop with the exact command to run."""
    script = HERE / provision_script(backend)
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True)
    if check.returncode == 0:
        return
    if os.geteuid() != 0:
        session.error(f"{check.stdout.strip()}; run: sudo bash {script}")
    session.log(f"provisioning {backend}: {check.stdout.strip()}")
    session.run("bash", str(script), external=True)


def _bench(session, backend: str) -> None:
    _provision(session, backend)
    args = list(session.posargs)
    if any(a in ("--mode=engine", "--mode=both") for a in args) or any(
        a == "--mode" and b in ("engine", "both") for a, b in itertools.pairwise(args)
    ):
        _provision(session, "engine")  # Docker Engine for engine mode (cowlab.measure.engine)
    _install(session, "test,engine,vm")  # vm: virtme-ng, for backends this kernel lacks (cowlab.storage.vm)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(HERE / "results" / "local")]  # git-ignored: the user's own runs
    try:
        session.run("cowlab", "bench", backend, *args)
    finally:
        _where_cowlab_is(session)


def _bench_session(backend: str):
    @_gives_back
    def session_fn(session):
        _bench(session, backend)

    session_fn.__doc__ = (
        f"Benchmark the {backend} backend into results/local/ (`-- --quick` for a first answer in minutes)."
    )
    session_fn.__name__ = f"bench_{backend.replace('-', '_')}"
    return nox.session(name=f"bench-{backend}")(session_fn)


for _b in BACKENDS:
    globals()[f"bench_{_b.replace('-', '_')}"] = _bench_session(_b)


@nox.session(name="bench-pytest")
def bench_pytest(session):
    """`pytest bench`: pytest-benchmark over the same case runner and results layout as
    `cowlab bench` (as root). `-- --driver vfs --quick --workload space --out DIR`."""
    args = list(session.posargs) or ["--driver", "vfs", "--quick"]
    driver = next((b for a, b in itertools.pairwise(args) if a == "--driver"), "overlay2")
    _provision(session, driver)
    _install(session)
    session.run("pytest", "bench", "-p", "no:cacheprovider", *args)


@nox.session
@_gives_back
def cowlab(session):
    """Run the cowlab command itself: `sudo nox -s cowlab -- status` (or -- drivers, show RUN,
    cleanup --all --images ...), and print where it is installed."""
    _install(session, "engine,vm")
    session.run("cowlab", *(session.posargs or ["--help"]))
    _where_cowlab_is(session)


@nox.session
@_gives_back
def lint(session):
    """ruff (lint and format check), mypy and the import-linter layers contract: what
    .pre-commit-config.yaml runs, and CI before the tests. Needs no root."""
    _install(session, "test,lint")
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "noxfile.py")
    session.run("mypy")
    session.run("lint-imports")


@nox.session
@_gives_back
def tests(session):
    """The test suite (as root: it mounts filesystems). CI runs this."""
    _provision(session, "host")
    _provision(session, "devicemapper")  # the kernel VM of tests/test_devicemapper_vm.py
    _provision(session, "report")  # chromium for tests/test_report.py
    _install(session, "test,notebooks,engine,vm")
    session.run("lint-imports")  # the layers contract of pyproject.toml: imports point down
    session.run("pytest", *(session.posargs or ["tests", "-q", "-rs"]))


@nox.session
@_gives_back
def labs(session):
    """Replay every workshop lab runnable here, checking each expectation (as root; the device
    mapper lab in the kernel VM). `-- 03` replays one; `cowlab lab list` says what runs here."""
    _provision(session, "host")
    _install(session, "test,engine,vm")
    # Lab ids are the words that are neither options nor an option's value (`--vm never`).
    takes_value = {"--vm", "--kernel", "--labs", "--json-report"}
    ids = [
        a for prev, a in itertools.pairwise(["", *session.posargs]) if not a.startswith("-") and prev not in takes_value
    ]
    # What these labs need, as their front matter says, installed by the same provisioning
    # scripts as the bench sessions (so `-- 01` does not pull in QEMU or Docker).
    needed = session.run("cowlab", "lab", "scripts", *ids, silent=True) or ""
    for script in needed.split():
        _provision(session, script)
    session.run("cowlab", "lab", "run", *(session.posargs or ["--all"]))


@nox.session
@_gives_back
def notebooks(session):
    """Execute every notebook in notebooks/ against results/ (fails on any cell error)."""
    _install(session, "notebooks")
    session.run("python", "-m", "cowlab.report.notebooks", "run", *(session.posargs or ["notebooks"]))


@nox.session
@_gives_back
def lab(session):
    """Open Jupyter Lab on notebooks/ with cowlab importable (http://127.0.0.1:8888)."""
    _install(session, "notebooks")
    session.run(
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        "--allow-root",
        f"--notebook-dir={HERE / 'notebooks'}",
        *session.posargs,
    )


@nox.session(name="vagrant-validate", venv_backend="none")
def vagrant_validate(session):
    """`vagrant validate` of every machine of vagrant/Vagrantfile (offline, seconds)."""
    _provision(session, "vagrant-host")
    session.chdir(str(HERE / "vagrant"))
    session.run("vagrant", "validate", external=True, env={"VAGRANT_CHECKPOINT_DISABLE": "1"})


@nox.session(name="vagrant-smoke", venv_backend="none")
def vagrant_smoke(session):
    """Build the local Debian 12 box, `vagrant up btrfs` under TCG in a private network namespace,
    run `nox -s bench-btrfs -- --quick` in it, check the run comes back; tear all down (as root)."""
    _provision(session, "vagrant-host")
    session.run(
        "/usr/bin/python3",
        "-m",
        "cowlab.cli.vagrant_smoke",
        *session.posargs,
        external=True,
        env={"PYTHONPATH": str(HERE / "src")},
    )


@nox.session
@_gives_back
def conformance(session):
    """The conformance suite on every driver available here (device mapper in the kernel VM):
    each driver's containers compared with a plain directory, a driver × case table, non-zero
    exit on any failure (as root).
    `-- --driver NAME` for one driver, `-- --case NAME`, `-- --every-layer`, `-- --list`."""
    _provision(session, "host")
    _install(session)
    session.run("cowlab", "conformance", *session.posargs)


@nox.session(name="aufs-kernel")
@_gives_back
def aufs_kernel(session):
    """Build the kernel with AUFS that aufs runs on in the kernel VM (as root; 54 minutes measured on
    two loaded cores, once per machine: cached in /var/cache/cowlab/kernels by a key of its inputs)."""
    _provision(session, "aufs-kernel")
    _install(session, "vm")
    session.run("cowlab", "kernels", "get", "aufs", *session.posargs)
    session.run("cowlab", "kernels")


@nox.session
def report(session):
    """The maintainer's rebuild of the committed reference: verdicts for every slide claim from
    the reference runs in results/ (not results/local/) into report/ (index.html, README.md,
    verdicts.json, figures/) and README.md's claims table. Arguments after -- go to
    `cowlab report` (e.g. -- results/local --out results/local/report --compare-with results)."""
    session.install("-e", ".")
    session.chdir(str(HERE))  # relative paths: the committed report names `results`, not a checkout
    args = list(session.posargs) or ["results", "--out", "report", "--readme", "README.md"]
    session.run("cowlab", "report", *args)


def _provision_reason(backend: str, log=print) -> str | None:
    """None when the backend's provisioning check passes (or installing it did), else why not."""
    script = HERE / "vagrant" / "provision" / f"{backend}.sh"
    if not script.exists():
        return None
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True)
    if check.returncode == 0:
        return None
    if os.geteuid() != 0:
        return f"{check.stdout.strip() or 'not provisioned'}; run: sudo bash {script}"
    log(f"provisioning {backend}: {check.stdout.strip() or 'not provisioned'} (bash {script.relative_to(HERE)})")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    return None if r.returncode == 0 else f"provisioning failed: {(r.stderr or r.stdout).strip()[-300:]}"


@nox.session(name="bench-all")
@_gives_back
def bench_all(session):
    """The quick grid (`-- --quick`) or any `cowlab bench` arguments for every driver that runs
    here, then the report (as root). Drivers that need the kernel VM run only with `--with-vm`;
    what cannot run is skipped with the reason. Your runs land in results/local/ and their report
    in results/local/report/ (git-ignored), with a section comparing them with the committed
    reference runs; `-- --out DIR`: runs in DIR, report in DIR/report. `-- --reference` (the
    maintainer's choice) writes the reference itself: runs into results/<host>/, report/ and
    README.md's claims table rebuilt (cowlab.report.places decides)."""
    _install(session, "test,engine,vm")
    args = list(session.posargs)
    with_vm = "--with-vm" in args
    reference = "--reference" in args
    args = [a for a in args if a not in ("--with-vm", "--reference")]
    out = None
    for i, a in enumerate(args):
        if a.startswith("--out="):
            out = a.split("=", 1)[1]
        elif a == "--out" and i + 1 < len(args):
            out = args[i + 1]
    try:
        places = bench_places(HERE, out, reference=reference)
    except ValueError as e:
        session.error(str(e))
    if out is None:
        args += ["--out", str(places.results)]

    # stdout alone (session.run(silent=True) would mix in stderr)
    def ask():
        cp = subprocess.run(
            [os.path.join(session.bin, "cowlab"), "drivers", "--json"], capture_output=True, text=True, check=True
        )
        return json.loads(cp.stdout)

    # What a driver lacks that its provisioning script installs (tools, not kernels), installed
    # first — as a single bench session does — then every driver asked again: on a fresh machine
    # most drivers are "unavailable" only until then.
    failed = {}
    for d in ask():
        if not d["available"] and d.get("route") != "vm":
            why = _provision_reason(d["driver"], session.log)
            if why:
                failed[d["driver"]] = why
    drivers = ask()
    ran, skipped = [], []
    for d in drivers:
        name = d["driver"]
        if name in failed and not d["available"]:
            skipped.append((name, failed[name]))
            continue
        if not d["available"] and not (d.get("route") == "vm" and with_vm):
            why = d.get("reason", "") + (f" — {d['hint']}" if d.get("hint") else "")
            if d.get("route") == "vm":
                why += " (add -- --with-vm to run it in the kernel VM)"
            skipped.append((name, why))
            continue
        why = _provision_reason(name, session.log)
        if why:
            skipped.append((name, why))
            continue
        try:
            session.run("cowlab", "bench", name, *args)
            ran.append(name)
        except nox.command.CommandFailed:
            skipped.append((name, "`cowlab bench` failed: see its output above"))
    for name, why in skipped:
        session.log(f"skipped {name}: {why}")
    session.log(f"ran: {', '.join(ran) or 'none'}")
    session.chdir(str(HERE))  # relative paths: a report names `results/local`, not a checkout
    report = [_rel(places.results), "--out", _rel(places.report)]
    if places.readme:
        report += ["--readme", _rel(places.readme)]
    if places.compare_with:
        report += ["--compare-with", _rel(places.compare_with)]  # A: the reference, B: your runs
    session.run("cowlab", "report", *report)
    if places.compare_with:
        session.log(
            f"your machine against the reference, at the terminal: "
            f"cowlab compare {_rel(places.compare_with)} {_rel(places.results)}"
        )


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(HERE.resolve()))
    except ValueError:
        return str(p)
