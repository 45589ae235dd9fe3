"""The agenda table of labs/README.md, made from each lab's front matter.

python -m cowlab.labs.agenda [labs/]          # rewrite the table between the agenda markers
python -m cowlab.labs.agenda --check [labs/]  # exit 1 when the table is out of step (tests)
"""

from __future__ import annotations

import re
import sys

from cowlab.labs.lesson import Lesson, labs_dir, load_all

BEGIN = re.compile(r"<!-- agenda:begin[^>]*-->\n")
END = "<!-- agenda:end -->"


def _needs(les: Lesson) -> str:
    n = les.needs
    parts = [*n.get("features", []), *n.get("drivers", [])]
    return ", ".join(dict.fromkeys(parts)) or "—"


def table(lessons: list[Lesson]) -> str:
    rows = ["| lab | minutes | replay | needs |", "|---|---:|---:|---|"]
    for les in lessons:
        replay = f"{les.replay_seconds:.0f} s" if les.replay_seconds else "not measured"
        vm = " (kernel VM here)" if "dm-thin" in les.needs.get("features", []) else ""
        rows.append(f"| [{les.id} {les.title}]({les.path.name}) | {les.minutes} | {replay}{vm} | {_needs(les)} |")
    total = sum(les.minutes for les in lessons)
    replay_total = sum(les.replay_seconds or 0 for les in lessons)
    rows.append(f"| **{len(lessons)} labs** | **{total}** | **{replay_total / 60:.0f} min** | |")
    return "\n".join(rows) + "\n"


def render(readme: str, lessons: list[Lesson]) -> str:
    m = BEGIN.search(readme)
    end = readme.find(END)
    if not m or end < m.end():
        raise SystemExit("labs/README.md has no agenda markers")
    return readme[: m.end()] + table(lessons) + readme[end:]


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    d = labs_dir(args[0] if args else None)
    readme = d / "README.md"
    text = readme.read_text()
    new = render(text, load_all(d))
    if check:
        if new != text:
            print("labs/README.md's agenda is out of step with the labs: run python -m cowlab.labs.agenda")
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
