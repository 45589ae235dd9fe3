"""The lab replayer: a lesson's expectations decide, a false one fails the replay, every step's
commands count, cleanup steps run after a failure, and nothing a lab made outlives it — after a
failure, a timeout, Ctrl-C, or a SIGKILL followed by `cowlab cleanup`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import SRC, mounts_under
from cowlab.base.errors import CowlabError
from cowlab.labs import expect, lesson

REPO_LABS = Path(__file__).resolve().parent.parent / "labs"
IS_ROOT = os.geteuid() == 0


# --- the expectation language ------------------------------------------------------------------
def _eval(line: str, output: str = "", rc: int = 0, names=None):
    names = {} if names is None else names
    return expect.evaluate(expect.parse_line(line), output, rc, [], names)


def test_expectations_read_the_output():
    out = "total 4\n65M\tupper\ncharacter special file 0/0 upper/x\n"
    names: dict = {}
    assert _eval('contains "character special file 0/0"', out).ok
    assert not _eval('contains "regular file"', out).ok
    assert _eval('not contains "regular file"', out).ok
    assert _eval(r'matches "^\d+M\tupper$"', out).ok
    assert not _eval('matches "^upper"', out).ok
    assert _eval(r'let upper = size "^(\S+)\s+upper$"', out, names=names).ok
    assert names["upper"] == 65 * (1 << 20)
    assert _eval("upper >= 60 * MiB   # the whole file was copied up", names=names).ok
    assert not _eval("upper < 1 * MiB", names=names).ok
    assert _eval('let n = "total (\\d+)"', out, names=names).ok and names["n"] == 4
    assert _eval("1 <= n / 2 < 3", names=names).ok


def test_exit_expectations():
    assert _eval("exit 0", rc=0).ok and not _eval("exit 0", rc=1).ok
    assert _eval("exit != 0", rc=32).ok and not _eval("exit != 0", rc=0).ok
    assert expect.parse_line("exit != 0").wants_failure and not expect.parse_line("exit 0").wants_failure


@pytest.mark.parametrize(
    "s,v",
    [
        ("4096", 4096),
        ("4.0K", 4096),
        ("64M", 64 << 20),
        ("64MiB", 64 << 20),
        ("1.5G", 1.5 * (1 << 30)),
        ("12 KB", 12 << 10),
    ],
)
def test_sizes(s, v):
    assert expect.parse_size(s) == v


def test_a_missing_name_fails_with_its_reason():
    o = _eval("ratio > 10")
    assert not o.ok and "ratio is not defined" in o.detail


@pytest.mark.parametrize(
    "bad",
    [
        "__import__('os').system('x') == 0",
        "open('/etc/passwd') == 1",
        "x.y > 1",
        "[1][0] == 1",
        "lambda: 1",
        "1 + 1",
        'let 9x = "a"',
        "contains unquoted text",
        "exit maybe",
        'matches "("',
    ],
)
def test_bad_expectations_are_refused_when_the_lab_is_read(bad):
    with pytest.raises(CowlabError):
        expect.parse_expectations(bad, "lab.md:1")


# --- the lessons in labs/ ------------------------------------------------------------------------
def test_every_lab_in_the_repo_parses_with_steps_and_a_cleanup():
    labs = lesson.load_all(REPO_LABS)
    assert labs, "no labs found"
    for les in labs:
        assert les.body_steps and les.cleanup_steps, les.path
        assert "cowlab lab workdir" in les.body_steps[0].script, f"{les.path}: first step makes $LAB"
        assert "cowlab lab reset" in les.cleanup_steps[-1].script, f"{les.path}: last step resets"
        assert les.slide, f"{les.path}: quotes no slide line"
        answers = REPO_LABS / "answers" / les.path.name
        assert answers.exists(), f"{les.path.name}: no instructor answers in labs/answers/"


def test_slide_quotes_are_the_slides_words():
    refs = [p / "shared" / "reference" for p in Path(__file__).resolve().parents]
    ref = next((r for r in refs if r.is_dir()), None)
    texts = " ".join(p.read_text() for p in ref.glob("*.txt")) if ref else ""
    if not texts:
        pytest.skip("the slide text (../shared/reference) is not beside this checkout")
    norm = " ".join(texts.split())
    for les in lesson.load_all(REPO_LABS):
        for q in les.slide:
            assert " ".join(q.split()) in norm, f"{les.path.name}: {q!r} is not in the slides"


def _write_lab(d: Path, body: str, lab_id: str = "90", needs: str = "{}") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "README.md").write_text("test labs\n")
    p = d / f"{lab_id}-test.md"
    p.write_text(
        f'---\nid: "{lab_id}"\ntitle: test lab\nminutes: 1\nslide: []\nneeds: {needs}\n---\n' + textwrap.dedent(body)
    )
    return p


def test_lesson_errors_name_the_file_and_line(tmp_path):
    p = _write_lab(
        tmp_path / "labs",
        """
        ## one
        ```sh bogus
        true
        ```
        """,
    )
    with pytest.raises(CowlabError, match=r"90-test.md:\d+: unknown flag 'bogus'"):
        lesson.parse(p)
    p.write_text("no front matter\n```sh\ntrue\n```\n")
    with pytest.raises(CowlabError, match="front matter"):
        lesson.parse(p)
    _write_lab(tmp_path / "labs", "```sh\ntrue\n```\n", needs="{features: [warp-drive]}")
    with pytest.raises(CowlabError, match="unknown feature 'warp-drive'"):
        lesson.parse(tmp_path / "labs" / "90-test.md")


# --- replays -----------------------------------------------------------------------------------
LAB = """
## Step 1: workspace
```sh
export LAB=$(cowlab lab workdir 90) && cd "$LAB"
```

## Step 2: a mount of our own, and a background process
```sh
mkdir -p m && mount -t tmpfs -o size=1m lab90 m
echo hello > m/f
(sleep 300 & echo $! > sleeper.pid)
cat m/f
du -sk m
```
```expect
contains "hello"
let kib = "^([0-9]+)\\s+m$"
kib >= 1
{extra}
```
```check
findmnt -n "$LAB/m" >/dev/null   # hint: mount it
```

## Step 3
```sh
echo step three > three
```

## Cleanup
```sh cleanup
cd /
echo cleanup ran > /dev/null
cowlab lab reset 90
```
"""


def _replay(tmp_path, body: str, *ids: str, timeout: float = 120, extra_env=None):
    labs = tmp_path / "labs"
    if not (labs / "90-test.md").exists():
        _write_lab(labs, body)
    env = {"COWLAB_LABS": str(labs), **(extra_env or {})}
    from conftest import run_cli

    return run_cli(
        "lab",
        "run",
        *(ids or ("90",)),
        "--json-report",
        str(tmp_path / "rep.json"),
        root=tmp_path / "root",
        env=env,
        timeout=timeout,
    )


def _sleeper_gone(root: Path) -> None:
    # the background sleep the lab started must not outlive the replay
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
                env = Path(f"/proc/{d}/environ").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"sleep\x00300") and str(root).encode() in env:
                pytest.fail(f"the lab's background process {d} outlived the replay")


@pytest.mark.root
def test_a_true_lab_passes_and_leaves_nothing(tmp_path):
    cp = _replay(tmp_path, LAB.replace("{extra}", "kib < 1024"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    rep = json.loads((tmp_path / "rep.json").read_text())[0]
    assert rep["ok"] and [s["ok"] for s in rep["steps"]] == [True] * 4
    assert "PASS  lab 90" in cp.stdout
    assert not mounts_under(tmp_path)
    assert not list((tmp_path / "root" / "labs").iterdir())
    _sleeper_gone(tmp_path / "root")


@pytest.mark.root
def test_a_false_expectation_fails_the_replay_and_cleanup_still_runs(tmp_path):
    cp = _replay(tmp_path, LAB.replace("{extra}", "kib > 10 * GiB   # false: a 1 MiB tmpfs"))
    assert cp.returncode == 1, cp.stdout
    rep = json.loads((tmp_path / "rep.json").read_text())[0]
    assert not rep["ok"]
    steps = {s["n"]: s for s in rep["steps"]}
    assert not steps[2]["ok"] and "kib > 10 * GiB" in steps[2]["failures"][0]
    assert 3 not in steps, "the body stops at the first failing step"
    assert steps[4]["cleanup"] and steps[4]["ok"], "cleanup steps run after a failure"
    assert "FAIL  lab 90" in cp.stdout and "1 of 1 lab(s) failed" in cp.stderr
    assert not mounts_under(tmp_path)
    _sleeper_gone(tmp_path / "root")


@pytest.mark.root
def test_a_failing_command_early_in_a_step_fails_it(tmp_path):
    body = LAB.replace("{extra}", "").replace(
        "echo step three > three", "ls /no/such/dir\necho but the last command succeeds"
    )
    cp = _replay(tmp_path, body)
    assert cp.returncode == 1
    rep = json.loads((tmp_path / "rep.json").read_text())[0]
    s3 = [s for s in rep["steps"] if s["n"] == 3][0]
    assert not s3["ok"] and "ls /no/such/dir" in s3["failures"][0]


@pytest.mark.root
def test_a_step_that_expects_failure_passes_only_when_it_fails(tmp_path):
    body = LAB.replace("{extra}", "").replace(
        "echo step three > three\n```", 'cat /no/such/file\n```\n```expect\nexit != 0\ncontains "No such file"\n```'
    )
    cp = _replay(tmp_path, body)
    assert cp.returncode == 0, cp.stdout


@pytest.mark.root
def test_a_check_that_does_not_match_its_step_fails_the_replay(tmp_path):
    cp = _replay(tmp_path, LAB.replace("{extra}", "").replace('findmnt -n "$LAB/m"', 'test -e "$LAB/nothing"; false'))
    assert cp.returncode == 1
    rep = json.loads((tmp_path / "rep.json").read_text())[0]
    assert "check failed" in [s for s in rep["steps"] if s["n"] == 2][0]["failures"][0]


@pytest.mark.root
def test_a_step_over_its_timeout_is_ended_with_what_it_started(tmp_path):
    body = LAB.replace("{extra}", "").replace("echo step three > three", "sleep 600")
    body = body.replace("## Step 3\n```sh\n", "## Step 3\n```sh timeout=2\n")
    assert "timeout=2" in body
    cp = _replay(tmp_path, body, timeout=60)
    assert cp.returncode == 1
    rep = json.loads((tmp_path / "rep.json").read_text())[0]
    s3 = [s for s in rep["steps"] if s["n"] == 3][0]
    assert "timed out after 2 s" in s3["failures"][0]
    assert [s for s in rep["steps"] if s["cleanup"]][0]["ok"], "cleanup ran in a fresh shell"
    assert not mounts_under(tmp_path)
    _sleeper_gone(tmp_path / "root")


def _start_replay(tmp_path, body, signal_at: str):
    labs = tmp_path / "labs"
    _write_lab(labs, body)
    env = {k: v for k, v in os.environ.items() if k != "COWLAB_ROOT"}
    env.update(PYTHONPATH=str(SRC), COWLAB_LABS=str(labs))
    p = subprocess.Popen(
        [sys.executable, "-m", "cowlab", "--root", str(tmp_path / "root"), "lab", "run", "90"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    deadline = time.monotonic() + 60
    for line in p.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if line == f"  {signal_at}\n" or time.monotonic() > deadline:  # its output, not its prompt line
            break
    return p, seen


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupt_or_kill_mid_lab_leaves_nothing_after_cleanup(tmp_path, sig, cli):
    body = LAB.replace("{extra}", "").replace("echo step three > three", "echo waiting-now; sleep 600")
    p, seen = _start_replay(tmp_path, body, "waiting-now")
    assert any("waiting-now" in s for s in seen), "".join(seen)
    assert mounts_under(tmp_path), "the lab's mount exists while it runs"
    p.send_signal(sig)
    p.communicate(timeout=60)
    if sig == signal.SIGKILL:
        cp = cli("cleanup", root=tmp_path / "root")
        assert cp.returncode == 0, cp.stderr
    else:
        assert p.returncode != 0
    assert not mounts_under(tmp_path)
    assert not list((tmp_path / "root" / "labs").iterdir())
    assert not list((tmp_path / "root" / "journal").iterdir())
    _sleeper_gone(tmp_path / "root")


@pytest.mark.root
def test_check_tells_an_attendee_where_they_are(tmp_path, cli):
    labs = tmp_path / "labs"
    _write_lab(labs, LAB.replace("{extra}", ""))
    root = tmp_path / "root"
    env = {"COWLAB_LABS": str(labs)}
    wd = cli("lab", "workdir", "90", root=root, env=env)
    assert wd.returncode == 0, wd.stderr
    lab = Path(wd.stdout.strip())
    assert lab == root / "labs" / "90" and lab.is_dir()
    cp = cli("lab", "check", "90", root=root, env=env)
    assert "· step 2" in cp.stdout or "✗ step 2" in cp.stdout
    assert "hint: mount it" in cp.stdout and "next is step 2" in cp.stdout
    (lab / "m").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "lab90", str(lab / "m")], check=True)
    cp = cli("lab", "check", "90", root=root, env=env)
    assert "✓ step 2" in cp.stdout and "every step with a check is done" in cp.stdout, cp.stdout
    cp = cli("lab", "reset", "90", root=root, env=env)
    assert cp.returncode == 0, cp.stderr
    assert not lab.exists() and not mounts_under(tmp_path)


def test_lab_list_json_says_what_runs_here_and_why_not(tmp_path, cli):
    labs = tmp_path / "labs"
    _write_lab(labs, "```sh\ntrue\n```\n", lab_id="90")
    _write_lab(labs, "```sh\ntrue\n```\n", lab_id="91", needs="{features: [aufs]}")
    (labs / "91-test.md").rename(labs / "91-aufs.md")
    cp = cli("lab", "list", "--json", env={"COWLAB_LABS": str(labs)})
    assert cp.returncode == 0, cp.stderr
    rows = {r["id"]: r for r in json.loads(cp.stdout)}
    for r in rows.values():
        assert {"id", "title", "minutes", "runnable", "reason"} <= set(r)
    aufs = rows["91"]
    if not Path("/proc/filesystems").read_text().count("aufs"):
        from cowlab.storage import vm

        if IS_ROOT and vm.available("aufs"):  # the AUFS kernel is cached: the lab runs in the kernel VM
            assert aufs["runnable"] is True, aufs
        else:
            assert aufs["runnable"] is False and "aufs" in aufs["reason"] and "aufs-kernel" in aufs["hint"], aufs
    assert rows["90"]["runnable"] is IS_ROOT


def test_the_agenda_in_labs_readme_is_made_from_the_labs():
    from cowlab.labs import agenda

    assert agenda.main(["--check", str(REPO_LABS)]) == 0, (
        "labs/README.md's agenda is stale: run python -m cowlab.labs.agenda"
    )
    text = (REPO_LABS / "README.md").read_text()
    for les in lesson.load_all(REPO_LABS):
        assert f"]({les.path.name})" in text


@pytest.mark.root
def test_a_cgroup_the_lab_listed_goes_with_its_workspace_after_a_kill(tmp_path, cli):
    base = "/sys/fs/cgroup/pids" if os.path.isdir("/sys/fs/cgroup/pids") else "/sys/fs/cgroup"
    name = f"cowlab-labtest-{os.getpid()}"
    body = LAB.replace("{extra}", "").replace(
        "echo step three > three",
        f"CG={base}/{name}; echo $CG >> .cowlab-cgroups; mkdir $CG\n"
        "(echo $BASHPID > $CG/cgroup.procs; exec sleep 300) &\necho waiting-now; sleep 600",
    )
    p, seen = _start_replay(tmp_path, body, "waiting-now")
    assert os.path.isdir(f"{base}/{name}"), "".join(seen)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    cp = cli("cleanup", root=tmp_path / "root")
    assert cp.returncode == 0, cp.stderr
    assert not os.path.exists(f"{base}/{name}"), cp.stdout
    assert not mounts_under(tmp_path)
    _sleeper_gone(tmp_path / "root")


@pytest.mark.root
def test_two_labs_typed_in_one_shell_keep_apart_and_their_resets_leave_nothing(tmp_path):
    """Lab A exports COWLAB_ROOT=$LAB/cowlab and builds an image there; lab B, typed next in the
    same shell, gets its workspace beside A's (not inside A's state root) and its own image;
    both resets, typed in that shell in either order, leave the labs directory empty."""
    root = tmp_path / "root"
    spec = tmp_path / "s.toml"
    spec.write_text('name = "tiny"\n[[layers]]\nops = [{op = "file", path = "/f", size = 100}]\n')
    script = textwrap.dedent(f"""\
        set -e
        export LAB=$(cowlab lab workdir 90) && cd "$LAB"
        export COWLAB_ROOT=$LAB/cowlab
        cowlab image build {spec} >/dev/null
        export LAB=$(cowlab lab workdir 91) && cd "$LAB"
        echo "B=$LAB"
        export COWLAB_ROOT=$LAB/cowlab
        cowlab image build {spec} >/dev/null
        cd /
        cowlab lab reset 90
        cowlab lab reset 91
        echo "ROOT=$COWLAB_ROOT"
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("COWLAB_ROOT", "LAB")}
    env.update(COWLAB_ROOT=str(root), PYTHONPATH=str(SRC), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    cp = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert f"B={root}/labs/91" in cp.stdout, cp.stdout
    assert "an earlier lab's own state root" in cp.stderr
    assert "lab 90: reset" in cp.stdout and "lab 91: reset" in cp.stdout
    assert list((root / "labs").iterdir()) == []
    assert not mounts_under(tmp_path)


# --- the fresh-shell property ---------------------------------------------------------------------
def _steps(*scripts: str):
    return [lesson.Step(i, f"step {i}", textwrap.dedent(s), 1) for i, s in enumerate(scripts, 1)]


def test_shell_state_a_later_step_uses_must_be_guarded():
    from cowlab.labs import shellstate as S

    steps = _steps(
        "export LAB=/x; export COWLAB_ROOT=$LAB/cowlab\n",
        "deep=$(cowlab container create deep --driver overlay2)\nf() { echo hi; }\n",
        "echo \"$deep\" ${deep} '$deep in single quotes'  # $deep in a comment\n"
        "cat <<'EOF'\n$deep in a quoted here-document\nEOF\n",
        'echo "${deep:?run step 2 first}"\nf\n',
        ': "${COWLAB_ROOT:?run step 1 first}"\ndeclare -F f >/dev/null || { echo "run step 2 first" >&2; false; }\n'
        'f; cowlab image ls; echo "${deep:-none}"\n',
        'deep=again; echo "$deep"; cd "${LAB:?run step 1 first}"\n',
    )
    got = {(n.step, n.name): n.guarded for n in S.needed(steps)}
    assert got == {
        (2, "COWLAB_ROOT"): False,  # cowlab reads it unseen
        (3, "deep"): False,  # two bare uses (quotes and comments don't count)
        (4, "deep"): True,
        (4, "f"): False,
        (5, "COWLAB_ROOT"): True,
        (5, "f"): True,  # ${deep:-none} means to work without
        (6, "LAB"): True,
    }, got
    assert [n.name for n in S.needed(steps) if n.exported] == ["COWLAB_ROOT", "COWLAB_ROOT", "LAB"]
    assert "${deep:?run step 2 first}" in S.describe(next(n for n in S.needed(steps) if n.step == 3))


def test_every_lab_guards_what_it_takes_from_earlier_steps():
    """The property `cowlab lab run` refuses a lab without: in a new shell, each step that uses
    an earlier step's variable or function stops and names that step."""
    from cowlab.labs import replay

    for les in lesson.load_all(REPO_LABS):
        assert replay.fresh_shell_failures(les) == [], les.path.name


FRESH_LAB = """
## Step 1: workspace
```sh
export LAB=$(cowlab lab workdir 90) && cd "$LAB"
n=7
```

## Step 2: uses n
```sh
echo "n is ${n:?run step 1 first}"
```
```expect
contains "n is 7"
```

## Step 3: forgets the guard
```sh
echo "n again: {use}"
```

## Cleanup
```sh cleanup
cd /
cowlab lab reset 90
```
"""


@pytest.mark.root
def test_the_replayer_refuses_an_unguarded_lab_and_proves_a_guarded_one_in_new_shells(tmp_path):
    cp = _replay(tmp_path, FRESH_LAB.replace("{use}", "$n"))
    assert cp.returncode != 0
    assert "step 3 uses $n, which step 1 sets, without a guard" in cp.stdout
    (tmp_path / "labs" / "90-test.md").unlink()
    labs = tmp_path / "labs"
    _write_lab(labs, FRESH_LAB.replace("{use}", "${n:?run step 1 first}"))
    from conftest import run_cli

    cp = run_cli(
        "lab", "run", "90", "--fresh-shells", root=tmp_path / "root", env={"COWLAB_LABS": str(labs)}, timeout=120
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.count("in a new shell stops and names the step to run") == 2, cp.stdout
    assert not list((tmp_path / "root" / "labs").iterdir()) and not mounts_under(tmp_path)


@pytest.mark.root
def test_check_names_the_shell_state_a_new_shell_lacks(tmp_path, cli):
    labs = tmp_path / "labs"
    body = (
        FRESH_LAB.replace("{use}", "${n:?run step 1 first}")
        .replace('echo "n is', 'cd "${LAB:?run step 1 first}"; echo "n is')
        .replace('contains "n is 7"\n```\n', 'contains "n is 7"\n```\n```check\ntrue\n```\n')
    )
    _write_lab(labs, body)
    root = tmp_path / "root"
    env = {"COWLAB_LABS": str(labs)}
    lab = Path(cli("lab", "workdir", "90", root=root, env=env).stdout.strip())
    cp = cli("lab", "check", "90", root=root, env=env)  # no LAB in this "shell"
    assert "shell: $LAB is not set in this shell (a new shell?): run step 1 again" in cp.stdout, cp.stdout + cp.stderr
    assert "$n from step 1 are missing too" in cp.stdout, cp.stdout
    cp = cli("lab", "check", "90", root=root, env={**env, "LAB": str(lab)})
    assert "$LAB" not in cp.stdout and "$n from step 1 may be missing" in cp.stdout, cp.stdout
    assert cli("lab", "reset", "90", root=root, env=env).returncode == 0


@pytest.mark.root
def test_lab_06_in_new_shells_stops_at_each_step_that_needs_an_earlier_one(tmp_path, cli):
    """The fresh-shell property on a real lab, dynamically: every step of lab 06 that uses an
    earlier step's variables or functions, run in a new shell after the earlier steps ran in the
    replay's, stops and names the step to run; the replay then passes as usual."""
    from cowlab.labs import needs, shellstate

    les = lesson.find(REPO_LABS, "06")
    if not needs.evaluate(les.needs, "never").runnable:
        pytest.skip(f"lab 06 can't run here: {needs.evaluate(les.needs, 'never').reason}")
    probed = {n.step for n in shellstate.needed(les.body_steps)}
    cp = cli("lab", "run", "06", "--fresh-shells", root=tmp_path / "root", timeout=900)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    for n in probed:
        assert f"✓ step {n} in a new shell stops and names the step to run" in cp.stdout
    assert len(probed) >= 5 and not mounts_under(tmp_path)


def test_a_lab_the_vm_cannot_run_names_the_command_once(monkeypatch):
    """Lab 09's "not runnable" line: the reason says what is missing, the hint how to get it,
    and the provisioning command is not said twice."""
    from cowlab.labs import needs
    from cowlab.storage import vm

    monkeypatch.setattr(needs.os, "geteuid", lambda: 0)
    import dataclasses

    monkeypatch.setitem(needs.FEATURES, "dm-thin", dataclasses.replace(needs.FEATURES["dm-thin"], check=lambda: False))
    monkeypatch.setattr(vm, "kernel", lambda name=None: None)
    monkeypatch.delenv(vm.IN_VM, raising=False)
    v = needs.evaluate({"features": ["dm-thin"]}, "auto")
    assert not v.runnable and "no 6.1 kernel" in v.reason
    line = f"{v.reason} — {'; '.join(v.hints)}"
    assert line.count(vm.PROVISION) == 1, line


def test_a_step_streams_its_output_as_it_comes_and_keeps_its_blank_lines(state, tmp_path):
    """A line is echoed when it is printed, not when the next one comes (an instructor watching a
    long step sees it move); the newline printed before the done mark is not output."""
    from cowlab.base.resources import Resources
    from cowlab.labs.shell import Session

    res = Resources.for_run(state)
    sess = Session(res, tmp_path, dict(os.environ), tmp_path)
    try:
        seen: list[tuple[str, float]] = []
        t0 = time.monotonic()
        r = sess.run(
            "echo first; sleep 2; printf 'a\\n\\nb\\n\\n'; printf 'no newline'",
            30,
            echo=lambda s: seen.append((s, time.monotonic() - t0)),
        )
        assert [s for s, _ in seen] == ["first", "a", "", "b", "", "no newline"]
        assert seen[0][1] < 1.5 <= seen[1][1]  # "first" before the sleep ended
        assert r.output == "first\na\n\nb\n\nno newline" and r.rc == 0
    finally:
        sess.close()
        assert res.close() == []
