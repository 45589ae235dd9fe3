"""Replay a lab unattended, and check an attendee's machine against it.

A replay gives the lab a workspace of its own under the state root (journaled: Ctrl-C, an error
and `cowlab cleanup` after a kill all release what the lab mounted or attached there), starts
one bash session in it, and sources every ```sh step as typed. A step passes when its commands
succeeded (or failed, if it expects that), every expectation holds on its real output, and its
```check script says the machine is where the step should leave it. The first failing step ends
the body; the lab's cleanup steps run whatever happened; then the workspace is released.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cowlab.base.errors import CowlabError, Unavailable
from cowlab.base.resources import Resources
from cowlab.base.state import MARKER, StateRoot
from cowlab.labs import expect, needs, shellstate
from cowlab.labs.lesson import Lesson, Step
from cowlab.labs.shell import Session, StepResult
from cowlab.run import cleanup

WORKDIR_ENV = "COWLAB_LAB_WORKDIR"  # set in a replay: `cowlab lab workdir` answers with it
LAB_MARKER = ".cowlab-lab"


@dataclass
class StepReport:
    n: int
    title: str
    ok: bool
    seconds: float
    cleanup: bool = False
    rc: int = 0
    failures: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


@dataclass
class LabReport:
    id: str
    title: str
    route: str
    ok: bool
    seconds: float
    steps: list[StepReport] = field(default_factory=list)
    skipped: str | None = None
    interrupted: bool = False

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _bin_dir() -> str:
    """The environment this cowlab runs from: the lab's `cowlab` is this one."""
    return str(Path(sys.executable).parent)


def session_env(state: StateRoot, workdir: Path, tag_env: dict | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(tag_env or {})
    env["PATH"] = _bin_dir() + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env[WORKDIR_ENV] = str(workdir)
    env["COWLAB_ROOT"] = str(state.path)
    env.pop("LAB", None)  # the lab sets it itself, as the attendee does
    # Output the expectations can rely on: no colours, no pager, C number formats, 100 columns.
    env.update(
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        TERM="dumb",
        NO_COLOR="1",
        COLUMNS="100",
        PAGER="cat",
        SYSTEMD_PAGER="cat",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def fresh_shell_failures(lesson: Lesson) -> list[str]:
    """The fresh-shell property, read from the text: a step that uses a variable or function an
    earlier step made guards it (shellstate), so in a new shell it stops with "run step N
    first" instead of going on with an empty value."""
    return [shellstate.describe(n) for n in shellstate.unguarded(lesson.body_steps)]


def run(
    lesson: Lesson,
    state: StateRoot,
    echo=print,
    vm_mode: str = "auto",
    labs_path: Path | None = None,
    fresh_shells: bool = False,
) -> LabReport:
    """Replay one lab here (or in the kernel VM when it needs what only the VM has).
    fresh_shells: also run each step that needs shell state in a new shell first, where it
    must stop with a message naming the step to run (see _probe_fresh)."""
    bad = fresh_shell_failures(lesson)
    if bad:
        echo(f"=== lab {lesson.id}: steps use shell state without a guard ===")
        for b in bad:
            echo(f"  ✗ {b}")
        return LabReport(
            lesson.id,
            lesson.title,
            "text",
            False,
            0.0,
            [StepReport(0, "fresh-shell property", False, 0.0, failures=bad)],
        )
    verdict = needs.evaluate(lesson.needs, vm_mode)
    if not verdict.runnable:
        raise Unavailable(f"lab {lesson.id} ({lesson.title})", verdict.reason, "; ".join(dict.fromkeys(verdict.hints)))
    if verdict.route == "vm":
        return run_in_vm([lesson], state, echo, labs_path or lesson.path.parent)[0]
    return _run_native(lesson, state, echo, fresh_shells)


def _run_native(lesson: Lesson, state: StateRoot, echo, fresh_shells: bool = False) -> LabReport:
    state.ensure()
    t0 = time.monotonic()
    report = LabReport(lesson.id, lesson.title, "native", False, 0.0)
    names: dict = {}
    echo(f"=== lab {lesson.id}: {lesson.title} ({lesson.path.name}) ===")
    with Resources.for_run(state, lab=lesson.id) as res:
        labs_base = state.path / "labs"
        labs_base.mkdir(exist_ok=True)
        workdir = labs_base / f"{lesson.id}-replay-{os.getpid()}"
        res.acquire("workspace", lambda: _make_workdir(workdir, lesson.id), path=str(workdir), tag=res.owner)
        scratch = state.tmp / f"{os.getpid()}-lab-{lesson.id}"
        res.acquire("dir", lambda: scratch.mkdir(parents=True), path=str(scratch))
        env = session_env(state, workdir, {"COWLAB_OWNER": res.owner})
        sess = Session(res, workdir, env, scratch)
        probe = {n.step for n in shellstate.needed(lesson.body_steps)} if fresh_shells else set()
        try:
            failed = False
            try:
                for step in lesson.body_steps:
                    if step.n in probe:
                        why = _probe_fresh(res, step, env, scratch, names)
                        if why:
                            echo(f"  ✗ step {step.n} in a new shell: {why}")
                            report.steps.append(
                                StepReport(
                                    step.n,
                                    f"{step.label} (in a new shell)",
                                    False,
                                    0.0,
                                    failures=[f"in a new shell: {why}"],
                                )
                            )
                            failed = True
                            break
                        echo(f"  ✓ step {step.n} in a new shell stops and names the step to run")
                    sr = _step(sess, step, names, workdir, env, echo)
                    report.steps.append(sr)
                    if not sr.ok:
                        failed = True
                        break
            except KeyboardInterrupt:
                report.interrupted = True
                echo("interrupted: ending the lab's shell; its workspace is released")
                raise
            finally:
                if not report.interrupted:
                    if sess.proc.poll() is not None:  # a timeout ended it: cleanup gets a new one
                        sess.close()
                        sess = Session(res, workdir, env, scratch)
                    for step in lesson.cleanup_steps:
                        report.steps.append(_step(sess, step, names, workdir, env, echo))
            report.ok = not failed and all(s.ok for s in report.steps)
        finally:
            sess.close()
            for nested in cleanup.nested_roots(str(workdir)):  # a lab's own COWLAB_ROOT
                for line in cleanup.sweep(StateRoot(nested), everything=True):
                    if not line.startswith("released 0 "):
                        echo(f"  teardown {nested.name}: {line}")
    report.seconds = round(time.monotonic() - t0, 1)
    mark = "PASSED" if report.ok else "FAILED"
    echo(
        f"=== lab {lesson.id} {mark} in {report.seconds:.1f} s "
        f"({sum(s.ok for s in report.steps)}/{len(report.steps)} steps) ==="
    )
    return report


def _probe_fresh(res: Resources, step: Step, env: dict, scratch: Path, names: dict) -> str:
    """Run a step that needs shell state in a new shell (no $LAB, no COWLAB_ROOT, no earlier
    variables or functions, an empty directory), after the earlier steps ran in the session:
    it must say which step to run and not pass. '' when so, else what happened instead."""
    fresh = {k: v for k, v in env.items() if k not in ("LAB", "COWLAB_ROOT", WORKDIR_ENV)}
    empty = scratch / f"fresh-{step.n}"
    empty.mkdir()
    f = scratch / f"fresh-step-{step.n}.sh"
    f.write_text(step.script)
    try:
        sess = Session(res, empty, fresh, scratch)
        try:
            r = sess.run(step.script, min(step.timeout, 60.0))
        finally:
            sess.close()
    finally:
        import shutil

        shutil.rmtree(empty, ignore_errors=True)
    # A guard inside $(...) ends only that subshell: the line may still print, without its
    # number. So: it names the step to run, and it is not a step that held (it failed, or its
    # expectations do not hold on what it printed).
    held = not judge(step, r, dict(names))
    if "run step" not in r.output:
        tail = r.output.strip().splitlines()[-1:] or ["(no output)"]
        return (
            "it ran as if the earlier steps' shell were there"
            if held
            else f"it failed without naming the step to run: {tail[0]}"
        )
    if held:
        return "it named a step to run, yet printed what the lab expects, as if it had worked"
    return ""


def _make_workdir(workdir: Path, lab_id: str) -> None:
    workdir.mkdir()
    (workdir / LAB_MARKER).write_text(lab_id + "\n")


def timeout_factor() -> float:
    """How much longer a step may take than its lesson says: an emulated kernel VM (TCG) runs
    Python and every command several times slower, so a step's limit there is scaled, not the
    lesson's text (COWLAB_LAB_TIMEOUT_FACTOR overrides)."""
    forced = os.environ.get("COWLAB_LAB_TIMEOUT_FACTOR")
    if forced:
        return float(forced)
    return 8.0 if os.environ.get("COWLAB_VIRTUALIZATION") == "tcg" else 1.0


def _step(sess: Session, step: Step, names: dict, workdir: Path, env: dict, echo) -> StepReport:
    kind = "cleanup" if step.cleanup else "step"
    echo(f"--- {kind} {step.n}: {step.label}")
    for line in prompt_lines(step.script):
        echo(line)
    r = sess.run(step.script, step.timeout * timeout_factor(), echo=lambda line: echo(f"  {line}"))
    failures = judge(step, r, names)
    checked = []
    if not failures and step.check:
        ok, out = run_check(step.check, workdir, env)
        if not ok:
            failures.append(
                "check failed: the machine is not where this step should leave it"
                + (f" ({out.strip().splitlines()[-1]})" if out.strip() else "")
            )
        else:
            checked.append("check passed")
    for f in failures:
        echo(f"  ✗ {f}")
    if not failures:
        held = f"{len(step.expects)} expectation(s) held" if step.expects else "done"
        echo(f"  ✓ {held}" + (", check passed" if step.check else "") + f" ({r.seconds:.1f} s)")
    return StepReport(step.n, step.label, not failures, r.seconds, step.cleanup, r.rc, failures, checked)


def prompt_lines(script: str) -> list[str]:
    """The step as a terminal shows it being typed: `$ ` before each command, `> ` before the
    lines a command continues on (a trailing backslash, a here-document)."""
    import re

    out, heredoc, cont = [], None, False
    for line in script.rstrip("\n").splitlines():
        if heredoc is not None:
            out.append(f"> {line}")
            if line.strip() == heredoc:
                heredoc = None
            continue
        out.append(f"> {line}" if cont else f"$ {line}")
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc = m.group(1)
        cont = line.rstrip().endswith("\\")
    return out


def judge(step: Step, r: StepResult, names: dict) -> list[str]:
    """Every way this step's run differs from what the lab says; empty when it held."""
    failures = []
    if r.timed_out:
        return [f"timed out after {step.timeout * timeout_factor():.0f} s"]
    explicit_exit = [e for e in step.expects if e.kind == "exit"]
    if not explicit_exit and r.rc != 0:
        failures.append(f"exit status {r.rc} (the lab expects success)")
    if not step.expects_failure and r.failed_commands:
        failures += [f"a command failed (status, command): {c}" for c in r.failed_commands]
    for e in step.expects:
        o = expect.evaluate(e, r.output, r.rc, r.failed_commands, names)
        if not o.ok:
            failures.append(f"expected `{o.text}`: {o.detail}")
    return failures


def run_check(script: str, workdir: Path, env: dict) -> tuple[bool, str]:
    cenv = dict(env, LAB=str(workdir))
    cp = subprocess.run(
        ["bash", "-c", script],
        cwd=str(workdir) if workdir.is_dir() else "/",
        env=cenv,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return cp.returncode == 0, cp.stdout + cp.stderr


# --- the kernel VM -------------------------------------------------------------------------------
def run_in_vm(
    lessons: list[Lesson], state: StateRoot, echo, labs_path: Path, kernel: str | None = None
) -> list[LabReport]:
    """Replay labs in the kernel VM on `kernel` (default 6.1), all in one boot; reports come back as JSON."""
    from cowlab.storage import vm

    state.ensure()
    out = state.tmp / f"{os.getpid()}-lab-vm-reports"
    out.mkdir(parents=True, exist_ok=True)
    try:
        report_file = out / "reports.json"
        argv = [
            "lab",
            "run",
            *[les.id for les in lessons],
            "--vm",
            "never",
            "--labs",
            str(labs_path),
            "--json-report",
            str(report_file),
        ]
        t0 = time.monotonic()
        r = vm.run(
            state, argv, out=out, state_disk=16 << 30, echo=echo, timeout=600 + 600 * len(lessons), kernel_name=kernel
        )
        wall = time.monotonic() - t0
        got = json.loads(report_file.read_text()) if report_file.exists() else []
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    by_id = {g["id"]: g for g in got}
    reports = []
    for les in lessons:
        g = by_id.get(les.id)
        if g is None:
            reports.append(
                LabReport(
                    les.id,
                    les.title,
                    "vm",
                    False,
                    round(wall, 1),
                    skipped=f"the VM ended (status {r.returncode}) without a report",
                )
            )
            continue
        rep = LabReport(
            g["id"],
            g["title"],
            f"vm ({kernel or vm.DEFAULT_KERNEL}, {vm.accel()}, boot {r.boot_seconds} s)",
            g["ok"],
            g["seconds"],
            [StepReport(**s) for s in g["steps"]],
            g.get("skipped"),
            g.get("interrupted", False),
        )
        reports.append(rep)
    return reports


# --- an attendee's workspace -----------------------------------------------------------------
def home_root(state: StateRoot) -> StateRoot:
    """The state root the labs' workspaces live in. A lab gives itself a state root inside its
    workspace (`export COWLAB_ROOT=$LAB/cowlab`), which stays exported in the attendee's shell:
    a later lab's workspace, its reset and its check must not land inside the earlier lab's
    (…/labs/06/cowlab/labs/11), so a root inside a lab workspace stands for the root above
    the outermost such workspace."""
    p = Path(os.path.abspath(state.path))
    for anc in reversed(p.parents):  # outermost first
        if (anc / LAB_MARKER).is_file() and anc.parent.name == "labs":
            return StateRoot(anc.parent.parent)
    return state


def workdir_for(state: StateRoot, lab_id: str) -> Path:
    """$LAB for an attendee: <root>/labs/<id>, kept between commands until `cowlab lab reset`.
    In a replay, the replay's own workspace."""
    if os.environ.get(WORKDIR_ENV):
        return Path(os.environ[WORKDIR_ENV])
    state = home_root(state)
    state.ensure()
    wd = state.path / "labs" / lab_id
    owner = f"lab-{lab_id}"
    if not (state.journal / owner / "owner.json").exists() or not wd.is_dir():
        (state.path / "labs").mkdir(exist_ok=True)
        res = Resources(state, owner, "lab", {"lab": lab_id})
        if not wd.is_dir():
            res.acquire("workspace", lambda: _make_workdir(wd, lab_id), path=str(wd))
        elif not any(h.kind == "workspace" for h in res._live):
            res.add("workspace", path=str(wd))
    return wd


def find_workdir(state: StateRoot, lab_id: str) -> Path:
    """The attendee's workspace: $LAB when it is this lab's, else <root>/labs/<id>."""
    lab = os.environ.get("LAB")
    if lab and (Path(lab) / LAB_MARKER).is_file() and (Path(lab) / LAB_MARKER).read_text().strip() == lab_id:
        return Path(lab)
    return home_root(state).path / "labs" / lab_id


def reset(state: StateRoot, lab_id: str) -> list[str]:
    """Release everything an attendee's lab workspace holds, and the workspace itself."""
    wd = find_workdir(state, lab_id)
    here = os.path.realpath(os.getcwd())
    if here == os.path.realpath(wd) or here.startswith(os.path.realpath(wd) + "/"):
        raise CowlabError(f"your shell is inside {wd}: `cd /` first, then run this again")
    owner_state = StateRoot(wd.parent.parent)  # the root whose labs/ holds it (see home_root)
    done = []
    for nested in cleanup.nested_roots(str(wd)):
        done += [f"{nested.name}: {line}" for line in cleanup.sweep(StateRoot(nested), everything=True)]
    jd = owner_state.journal / f"lab-{lab_id}"
    if jd.exists():
        errs = Resources.open(owner_state, f"lab-{lab_id}").close()
        if errs:
            raise CowlabError("could not release: " + "; ".join(errs))
        done.append(f"released {wd}")
    elif os.environ.get(WORKDIR_ENV) == str(wd):  # a replay's own workspace: release it the same way
        from cowlab.base.resources import RELEASERS

        RELEASERS["workspace"]({"path": str(wd)}, StateRoot(wd.parent.parent))
        done.append(f"released {wd}")
    elif wd.exists():
        raise CowlabError(f"{wd} is not a lab workspace cowlab made (no journal entry); not touching it")
    return done


def shell_notes(lesson: Lesson, wd: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """What the attendee's shell lacks of what the steps left in it. Exported variables
    ($LAB, COWLAB_ROOT) reach `cowlab lab check` through its environment, so their absence is
    certain; a shell's own variables and functions don't, so those are named as a maybe."""
    environ = os.environ if environ is None else environ
    out: list[str] = []
    seen: set[str] = set()
    private: dict[int, set[str]] = {}
    for n in shellstate.needed(lesson.body_steps):
        if n.name in seen:
            continue
        seen.add(n.name)
        if not n.exported:
            private.setdefault(n.made_by, set()).add(f"{n.name}()" if n.function else f"${n.name}")
            continue
        have = environ.get(n.name)
        if n.name == "LAB" and have and os.path.realpath(have) != os.path.realpath(wd):
            out.append(f"shell: $LAB is {have}, not this lab's {wd}: run step {n.made_by} again")
        elif not have:
            out.append(f"shell: ${n.name} is not set in this shell (a new shell?): run step {n.made_by} again")
        elif (
            n.name == "COWLAB_ROOT"
            and (wd / "cowlab" / MARKER).exists()
            and os.path.realpath(have) != os.path.realpath(wd / "cowlab")
        ):
            out.append(f"shell: COWLAB_ROOT is {have}, not this lab's {wd / 'cowlab'}: run step {n.made_by} again")
    for step_n in sorted(private):
        names = ", ".join(sorted(private[step_n]))
        verb = "are" if out else "may be"
        out.append(
            f"shell: {names} from step {step_n} {verb} missing too (cowlab can't see a shell's own "
            f'variables; later steps stop with "run step {step_n} first" if so)'
        )
    return out


def check(lesson: Lesson, state: StateRoot) -> list[tuple[Step, bool, str]]:
    """Run every step's check against the attendee's workspace, in order."""
    wd = find_workdir(state, lesson.id)
    if not wd.is_dir():
        raise CowlabError(
            f"no workspace for lab {lesson.id} yet: start with its first step "
            f"(`export LAB=$(cowlab lab workdir {lesson.id})`)"
        )
    env = session_env(state, wd)
    env.pop(WORKDIR_ENV, None)
    if (wd / "cowlab" / MARKER).exists():
        env["COWLAB_ROOT"] = str(wd / "cowlab")
    out = []
    for step in lesson.body_steps:
        if step.check is None:
            continue
        ok, text = run_check(step.check, wd, env)
        out.append((step, ok, text))
    return out
