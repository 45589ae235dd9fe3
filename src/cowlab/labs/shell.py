"""One bash session per replay, as an attendee's shell: `cd` and variables carry from step to step.

Each step's text is written to a file and `source`d into the session, so it runs exactly as typed
(multi-line commands, here-documents, loops). An ERR trap reports every command that failed,
not only the last one, so a step whose first line failed can't pass on its last line's status.
The session is a journaled child with its own process group: a timeout, Ctrl-C or `cowlab
cleanup` ends it and everything it started in the background.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cowlab.base.resources import Resources, spawn

ERR_MARK = "__cowlab_err__"


@dataclass
class StepResult:
    rc: int
    output: str
    failed_commands: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False


class Session:
    def __init__(self, res: Resources, cwd: Path, env: dict[str, str], scratch: Path):
        self.scratch = scratch
        self.done_mark = f"__cowlab_done_{uuid.uuid4().hex}__"
        self.proc = spawn(
            res,
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=env,
            start_new_session=True,
        )
        self.handle = self.proc._cowlab_handle  # type: ignore[attr-defined]
        self.res = res
        self._buf = b""
        # Every failing command, with its status and text, on the session's output; errtrace
        # carries the trap into functions, $(...) and subshells, where a step hides work too.
        self._send(f'set -o errtrace; trap \'printf "{ERR_MARK} %s %s\\n" "$?" "$BASH_COMMAND" >&2\' ERR\n')
        self._n = 0

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, script: str, timeout: float, echo=None) -> StepResult:
        """Source one step; stream its output to echo(line); wait for it or the timeout."""
        self._n += 1
        f = self.scratch / f"step-{self._n:02d}.sh"
        f.write_text(script)
        t0 = time.monotonic()
        # stdin from /dev/null: a step that reads input must not eat the next step's text.
        self._send(f"source {_q(str(f))} < /dev/null; printf '\\n%s %s\\n' {self.done_mark} \"$?\"\n")
        lines: list[str] = []
        sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        rc = None
        blanks = 0  # blank lines read but not yet echoed
        try:
            while rc is None:
                left = timeout - (time.monotonic() - t0)
                if left <= 0:
                    self.kill()
                    return _result(lines, 124, time.monotonic() - t0, self.scratch, timed_out=True)
                if not sel.select(timeout=min(left, 1.0)):
                    if self.proc.poll() is not None:
                        return _result(lines, self.proc.returncode or 1, time.monotonic() - t0, self.scratch)
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self.proc.wait()
                    return _result(lines, self.proc.returncode or 1, time.monotonic() - t0, self.scratch)
                self._buf += chunk
                while b"\n" in self._buf:
                    raw, self._buf = self._buf.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    if line.startswith(self.done_mark):
                        rc = int(line.split()[1])
                        break
                    lines.append(line)
                    # Each line as it comes (a long step shows its progress), but a blank one
                    # waits for the next: the last may be the newline printed before the mark
                    # (which keeps the mark off a last line that had no newline of its own).
                    if line == "":
                        blanks += 1
                    elif echo:
                        for _ in range(blanks):
                            echo("")
                        blanks = 0
                        if not line.startswith(ERR_MARK):
                            echo(line)
        finally:
            sel.close()
        if lines and lines[-1] == "":
            lines.pop()
            blanks -= 1
        for _ in range(blanks if echo else 0):
            echo("")
        return _result(lines, rc, time.monotonic() - t0, self.scratch)

    def kill(self) -> None:
        """End the session and everything it started (its process group)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("exit\n")
                self.proc.wait(timeout=5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        self.kill()
        self.res.release(self.handle)


def _result(
    lines: list[str], rc: int, seconds: float, scratch: Path | None = None, timed_out: bool = False
) -> StepResult:
    # `source STEP` itself fails when its last command did: that one is already reported.
    failed = [
        ln[len(ERR_MARK) + 1 :]
        for ln in lines
        if ln.startswith(ERR_MARK) and not (scratch and f"source '{scratch}" in ln)
    ]
    out = "\n".join(ln for ln in lines if not ln.startswith(ERR_MARK))
    return StepResult(rc, out, failed, round(seconds, 3), timed_out)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
