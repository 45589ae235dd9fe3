"""Deterministic fault injection: make cowlab SIGKILL itself at a named point.

    COWLAB_KILLPOINT=journal.mount:2 cowlab bench overlay2 ...

kills the process (SIGKILL, so no handler, no `finally`, no atexit runs) the 2nd time the point
`journal.mount` is reached; `name` alone means the first time. Several points may be given,
comma separated; the first one reached fires. With COWLAB_FAULTS_TRACE=FILE every point reached
is appended to FILE as "name count" (how tests find which points a run goes through).

Points are placed where a crash is most awkward (names are "<where>.<what>"):

    journal.<kind>     resources.add: the journal entry is written, the resource not yet created
    acquired.<kind>    resources.acquire: the resource exists, the caller does not know it yet
    release.<kind>     resources.release: the resource is gone, its journal entry not yet
    spawn              resources.spawn: the child runs, its pid is not journaled yet
    apply.member       layers.apply_tar: after each member written (a half-extracted layer)
    build.staged       images.build: a layer tar written to staging, not yet in the store
    build.layer        images.build: a layer stored, the image manifest not yet written
    import.layer       images.import_archive: a layer copied out of the archive and checked
    loop.mkfs          backing.make_loop: the image file is made and formatted, no loop device
    loop.attached      backing.make_loop: the loop device exists, its name is not journaled
    sample             results.RunWriter.add: a sample is written and flushed

When COWLAB_KILLPOINT and COWLAB_FAULTS_TRACE are unset (always, outside tests) point() is a
function that returns at once: the check is done once, at import.
"""

from __future__ import annotations

import os
import signal

ENV = "COWLAB_KILLPOINT"
TRACE_ENV = "COWLAB_FAULTS_TRACE"


def parse(spec: str) -> dict[str, int]:
    """'a:2,b' → {'a': 2, 'b': 1}; a malformed count is a ValueError (tests should not guess)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition(":")
        count = int(n) if n else 1
        if not name or count < 1:
            raise ValueError(f"{ENV}: bad point {part!r} (want NAME or NAME:N with N >= 1)")
        out[name] = count
    return out


_targets = parse(os.environ.get(ENV, ""))
_trace = os.environ.get(TRACE_ENV) or None
_counts: dict[str, int] = {}


def _point(*parts: str) -> None:
    name = ".".join(parts)
    n = _counts[name] = _counts.get(name, 0) + 1
    if _trace:
        with open(_trace, "a") as f:
            f.write(f"{name} {n}\n")
    if _targets.get(name) == n:
        os.kill(os.getpid(), signal.SIGKILL)


def _nothing(*parts: str) -> None:
    return None


point = _point if (_targets or _trace) else _nothing
enabled = point is _point
# point("journal", kind) names the point "journal.<kind>": the name is only joined when enabled.


def counts() -> dict[str, int]:
    """How often each point was reached in this process (empty unless enabled)."""
    return dict(_counts)
