"""Parse a lab's Markdown into its metadata and steps (labs/FORMAT.md is the reference).

The front matter (YAML between `---` lines) says what the lab is and needs. Every ```sh fence is
a step the attendee types; the ```expect and ```check fences that follow it (before the next
```sh) belong to it. The step's title is the heading above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from markdown_it import MarkdownIt

from cowlab.base.errors import CowlabError
from cowlab.labs.expect import Expectation, parse_expectations

FENCE_KINDS = {"sh", "expect", "check"}
STEP_FLAGS = {"cleanup"}  # `sh cleanup`: runs at the end whatever happened before
DEFAULT_TIMEOUT = 120.0


@dataclass
class Step:
    n: int
    title: str
    script: str
    line: int  # 1-based line of the fence in the file
    cleanup: bool = False
    timeout: float = DEFAULT_TIMEOUT
    expects: list[Expectation] = field(default_factory=list)
    check: str | None = None  # a script: exit 0 when the machine is where this step leaves it
    hints: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The heading without a leading "Step N:" (transcripts number steps themselves)."""
        return re.sub(r"^step\s+\d+\s*[:.—-]\s*", "", self.title, flags=re.I) or self.title

    @property
    def expects_failure(self) -> bool:
        return any(e.kind == "exit" and e.wants_failure for e in self.expects)


@dataclass
class Lesson:
    id: str
    title: str
    minutes: int
    path: Path
    needs: dict
    slide: list[str]
    steps: list[Step]
    replay_seconds: float | None = None  # measured, recorded in the front matter

    @property
    def body_steps(self) -> list[Step]:
        return [s for s in self.steps if not s.cleanup]

    @property
    def cleanup_steps(self) -> list[Step]:
        return [s for s in self.steps if s.cleanup]


_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_ID = re.compile(r"^\d{2}$")
_KNOWN_KEYS = {"id", "title", "minutes", "needs", "slide", "replay_seconds"}


def parse(path: Path) -> Lesson:
    text = path.read_text()
    m = _FRONT.match(text)
    if not m:
        raise CowlabError(f"{path}: no front matter (a YAML block between '---' lines at the top)")
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise CowlabError(f"{path}: front matter is not valid YAML: {e}") from None
    unknown = set(meta) - _KNOWN_KEYS
    if unknown:
        raise CowlabError(f"{path}: unknown front matter key(s) {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
    lid = str(meta.get("id", ""))
    if not _ID.match(lid):
        raise CowlabError(f"{path}: id must be two digits, e.g. '03' (got {lid!r})")
    for key in ("title", "minutes"):
        if key not in meta:
            raise CowlabError(f"{path}: front matter lacks {key!r}")
    slide = meta.get("slide") or []
    slide = [slide] if isinstance(slide, str) else list(slide)
    steps = _steps(path, text)
    if not steps:
        raise CowlabError(f"{path}: no ```sh step")
    from cowlab.labs.needs import check_needs_spec

    needs = meta.get("needs") or {}
    check_needs_spec(path, needs)
    return Lesson(lid, str(meta["title"]), int(meta["minutes"]), path, needs, slide, steps, meta.get("replay_seconds"))


def _steps(path: Path, text: str) -> list[Step]:
    tokens = MarkdownIt("commonmark").parse(text)
    steps: list[Step] = []
    heading = ""
    pending_heading = False
    for t in tokens:
        if t.type == "heading_open":
            pending_heading = True
            continue
        if pending_heading and t.type == "inline":
            heading = t.content.strip()
            pending_heading = False
            continue
        if t.type != "fence":
            continue
        words = t.info.split()
        if not words or words[0] not in FENCE_KINDS:
            continue  # ```text, ```console...: shown, not replayed
        kind, flags = words[0], words[1:]
        line = (t.map[0] + 1) if t.map else 0
        where = f"{path.name}:{line}"
        if kind == "sh":
            cleanup, timeout = False, DEFAULT_TIMEOUT
            for f in flags:
                if f in STEP_FLAGS:  # only `cleanup` so far
                    cleanup = True
                elif f.startswith("timeout="):
                    try:
                        timeout = float(f.split("=", 1)[1])
                    except ValueError:
                        raise CowlabError(f"{where}: timeout= needs seconds, got {f!r}") from None
                else:
                    raise CowlabError(f"{where}: unknown flag {f!r} on a sh fence (known: cleanup, timeout=S)")
            steps.append(Step(len(steps) + 1, heading, t.content, line, cleanup=cleanup, timeout=timeout))
            continue
        if not steps:
            raise CowlabError(f"{where}: a ```{kind} block before any ```sh step")
        step = steps[-1]
        if kind == "expect":
            step.expects += parse_expectations(t.content, where)
        else:
            if step.check is not None:
                raise CowlabError(f"{where}: step {step.n} has two ```check blocks")
            step.check = t.content
            step.hints = [ln.split("# hint:", 1)[1].strip() for ln in t.content.splitlines() if "# hint:" in ln]
    return steps


def labs_dir(explicit: str | None = None) -> Path:
    """Where the lessons are: --labs, $COWLAB_LABS, or labs/ of the checkout cowlab runs from."""
    import os

    cand = explicit or os.environ.get("COWLAB_LABS")
    if cand:
        p = Path(cand)
        if not p.is_dir():
            raise CowlabError(f"labs directory {p} does not exist")
        return p.resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "labs" / "README.md").exists() and (parent / "pyproject.toml").exists():
            return parent / "labs"
    raise CowlabError(
        "no labs/ directory found next to this cowlab install; pass --labs DIR "
        "(the labs/ folder of a cowlab checkout) or set COWLAB_LABS"
    )


def load_all(directory: Path) -> list[Lesson]:
    lessons = [parse(p) for p in sorted(directory.glob("[0-9][0-9]-*.md"))]
    seen: dict[str, Path] = {}
    for lesson in lessons:
        if lesson.id in seen:
            raise CowlabError(f"lab id {lesson.id} used by {seen[lesson.id].name} and {lesson.path.name}")
        if not lesson.path.name.startswith(lesson.id + "-"):
            raise CowlabError(f"{lesson.path.name}: file name must start with its id {lesson.id}-")
        seen[lesson.id] = lesson.path
    return lessons


def find(directory: Path, lab_id: str) -> Lesson:
    lab_id = lab_id.zfill(2) if lab_id.isdigit() else lab_id
    for lesson in load_all(directory):
        if lesson.id == lab_id or lesson.path.stem == lab_id:
            return lesson
    ids = ", ".join(les.id for les in load_all(directory))
    raise CowlabError(f"no lab {lab_id!r} in {directory} (labs: {ids})")
