"""What a lab step needs from the shell that earlier steps left: variables they set, functions
they defined. In a new shell (a second terminal, `sudo -i` again after a disconnect) those are
gone while the files the steps made are still there, and a step that goes on with an empty
`$deep` measures something else and prints a believable number. So a step that uses such a
variable must guard it, `${deep:?run step 3 first}` (bash stops the step there, printing the
message), and a function must be checked the same way (`declare -F spec >/dev/null || { echo
"run step 2 first" >&2; false; }`). needed() finds, by reading the steps' text, every use that
lacks its guard; the replayer refuses a lab with one (`cowlab lab run`), and `cowlab lab check`
names the variables a new shell is missing.

The reading is of bash as the labs write it: assignments (`x=`, `export x=`, `local`, `read x`,
`for x in`), expansions (`$x`, `${x}`, `${x:-…}`), function definitions (`f() {`) and calls (f as
a command word), outside single quotes and comments. A here-document's body counts unless its
delimiter is quoted, as bash expands it. `COWLAB_ROOT` is also used by every `cowlab` command
that reads the state root (all but `cowlab lab …`), without appearing in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# variables every shell has: a step may use them whatever earlier steps did
SHELL_VARS = frozenset(
    {
        "HOME",
        "PATH",
        "PWD",
        "OLDPWD",
        "USER",
        "SHELL",
        "TERM",
        "BASHPID",
        "RANDOM",
        "SECONDS",
        "LINENO",
        "UID",
        "EUID",
        "HOSTNAME",
        "IFS",
        "OPTIND",
        "REPLY",
        "PIPESTATUS",
        "BASH_REMATCH",
        "FUNCNAME",
        "LANG",
        "LC_ALL",
    }
)
_ASSIGN = re.compile(
    r"(?:^|[;&|({`]|\$\(|\bthen\b|\bdo\b|\belse\b|\b(?:export|local|readonly|declare|typeset)"
    r"(?:\s+-\w+)*)\s*([A-Za-z_]\w*)(?:\[[^\]]*\])?\+?=",
    re.M,
)
_FOR = re.compile(r"\bfor\s+([A-Za-z_]\w*)\s+in\b")
_READ = re.compile(r"\b(?:read|mapfile|readarray)((?:\s+-\w+(?:\s+\S+)?)*)((?:\s+[A-Za-z_]\w*)+)")
_FUNC = re.compile(r"(?:^|[;&|]\s*|\bfunction\s+)([A-Za-z_][\w-]*)\s*\(\)\s*\{?", re.M)
_USE = re.compile(r"\$\{?#?([A-Za-z_]\w*)")
_COWLAB_STATE_CMD = re.compile(r"(?:^|[;&|(`]|\$\()\s*(?:[A-Z_]+=\S+\s+)*cowlab\s+(?!lab\b)([a-z]+)", re.M)


def _code(script: str) -> str:
    """The script with single-quoted strings, comments and quoted here-documents blanked (same
    length: positions still compare)."""
    out = list(script)
    i, n, dq = 0, len(script), False
    heredocs: list[tuple[str, bool]] = []
    while i < n:
        c = script[i]
        if c == "\n" and heredocs:
            i += 1
            for delim, quoted in heredocs:
                while i < n:
                    j = script.find("\n", i)
                    j = n if j < 0 else j
                    line = script[i:j]
                    if quoted:
                        for k in range(i, j):
                            out[k] = " "
                    i = j + 1
                    if line.strip() == delim:
                        break
            heredocs = []
            continue
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if c == '"':
            dq = not dq
        elif c == "'" and not dq:
            j = script.find("'", i + 1)
            j = n if j < 0 else j
            for k in range(i, j + 1 if j < n else n):
                out[k] = " "
            i = j + 1
            continue
        elif c == "#" and not dq and (i == 0 or script[i - 1] in " \t\n;"):
            j = script.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
            continue
        elif c == "<" and not dq and script.startswith("<<", i) and not script.startswith("<<<", i):
            m = re.match(r"<<-?\s*(['\"]?)(\w+)\1", script[i:])
            if m:
                heredocs.append((m.group(2), bool(m.group(1))))
                i += m.end()
                continue
        i += 1
    return "".join(out)


def assigned(script: str) -> dict[str, int]:
    """Variables the script sets, with the position of the first assignment."""
    code = _code(script)
    out: dict[str, int] = {}
    for rx in (_ASSIGN, _FOR):
        for m in rx.finditer(code):
            out.setdefault(m.group(1), m.start(1))
    for m in _READ.finditer(code):
        for name in m.group(2).split():
            out.setdefault(name, m.start(2))
    return out


def functions(script: str) -> dict[str, int]:
    return {m.group(1): m.start(1) for m in _FUNC.finditer(_code(script))}


_EXP = re.compile(r"\$(?:\{(#?)([A-Za-z_]\w*)([^}]*)\}|([A-Za-z_]\w*))")


def expansions(script: str, names: set[str]) -> list[tuple[str, int, int, str]]:
    """Every expansion of one of names: (name, start, end, form), form being "guard" (${x:?…}
    whose message names a step), "default" (${x:-…}, ${x:=…}, ${x:+…}: the step means to work
    without it), or "bare" (anything else: $x, ${x}, ${x%…}, ${#x})."""
    out = []
    for m in _EXP.finditer(_code(script)):
        name = m.group(2) or m.group(4)
        if name not in names:
            continue
        op = m.group(3) or ""
        if not m.group(1) and re.match(r":?\?", op) and "step" in op:
            form = "guard"
        elif not m.group(1) and re.match(r":?[-=+]", op):
            form = "default"
        else:
            form = "bare"
        out.append((name, m.start(), m.end(), form))
    return out


def uses(script: str, names: set[str]) -> dict[str, int]:
    """First position where each of names is expanded."""
    out: dict[str, int] = {}
    for name, start, _, _ in expansions(script, names):
        out.setdefault(name, start)
    return out


def calls(script: str, funcs: set[str]) -> dict[str, int]:
    code = _code(script)
    out: dict[str, int] = {}
    for f in funcs:
        m = re.search(rf"(?:^|[;&|(`]|\$\(|\bthen\b|\bdo\b)\s*{re.escape(f)}(?=\s|$|;|\))", code, re.M)
        if m:
            out[f] = m.start()
    return out


def _func_guarded(script: str, f: str, before: int) -> bool:
    code = _code(script)[:before]
    return bool(re.search(rf"(?:declare\s+-F|type)\s+(?:[\w-]+\s+)*{re.escape(f)}\b[^\n]*\|\|[^\n]*step", code))


@dataclass
class Need:
    step: int  # the step that needs it
    name: str  # a variable or a function
    made_by: int  # the earlier step that sets it
    guarded: bool
    exported: bool  # visible to `cowlab lab check` (it runs from that shell)
    function: bool = False


def needed(steps) -> list[Need]:
    """Every variable or function a step uses that an earlier step (not itself, before the use)
    made, with whether the step guards it: every expansion a ${x:?…} naming a step (bash stops
    that command line, interactive or not, printing the message), or for COWLAB_ROOT (used by
    cowlab commands unseen) and functions, a guard before the first use. steps: the lesson's
    body steps, in order."""
    made: dict[str, int] = {}
    exported: set[str] = set()
    funcs: dict[str, int] = {}
    out: list[Need] = []
    for st in steps:
        script, code = st.script, _code(st.script)
        own = assigned(script)
        own_f = functions(script)
        names = set(made) - SHELL_VARS
        per: dict[str, list[str]] = {}
        first: dict[str, int] = {}
        for name, start, _, form in expansions(script, names):
            if name in own and own[name] < start:
                continue
            per.setdefault(name, []).append(form)
            first.setdefault(name, start)
        if "COWLAB_ROOT" in made:
            m = _COWLAB_STATE_CMD.search(code)
            if m and not (own.get("COWLAB_ROOT", len(code)) < m.start()):
                if "COWLAB_ROOT" not in first or first["COWLAB_ROOT"] > m.start():
                    per.setdefault("COWLAB_ROOT", []).insert(0, "bare")  # an unseen use
                    first["COWLAB_ROOT"] = m.start()
                # a guard anywhere before the command covers the unseen use
                g = [f for n, s0, _, f in expansions(script, {"COWLAB_ROOT"}) if s0 < m.start()]
                if "guard" in g:
                    per["COWLAB_ROOT"] = ["guard"]
        for name in sorted(per, key=lambda k: first[k]):
            forms = per[name]
            if all(f == "default" for f in forms):
                continue
            out.append(Need(st.n, name, made[name], all(f != "bare" for f in forms), name in exported))
        for f, pos in calls(script, set(funcs)).items():
            if f in own_f and own_f[f] < pos:
                continue
            out.append(Need(st.n, f, funcs[f], _func_guarded(script, f, pos), False, function=True))
        for name in own:
            made[name] = st.n
        exported |= {m.group(1) for m in re.finditer(r"\bexport\s+([A-Za-z_]\w*)", code)}
        for f in own_f:
            funcs[f] = st.n
    return out


def unguarded(steps) -> list[Need]:
    return [n for n in needed(steps) if not n.guarded]


def describe(n: Need) -> str:
    what = f"function {n.name}()" if n.function else f"${n.name}"
    hint = (
        f'declare -F {n.name} >/dev/null || {{ echo "run step {n.made_by} first" >&2; false; }}'
        if n.function
        else f"${{{n.name}:?run step {n.made_by} first}}"
    )
    return f"step {n.step} uses {what}, which step {n.made_by} sets, without a guard (e.g. {hint})"
