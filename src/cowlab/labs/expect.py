"""Expectations: what a step's output must show, one line each (labs/FORMAT.md).

    exit 0                      the step's last command's status (default: 0, and no command failed)
    exit != 0                   the step is meant to fail (e.g. "No space left on device")
    contains "TEXT"             the output (stdout and stderr) has TEXT; `not contains` the opposite
    matches "REGEX"             a line of the output matches (Python re, multiline); `not matches`
    let NAME = "REGEX"          NAME = the first group (or the match) of REGEX, as a number if it is one
    let NAME = size "REGEX"     ... read as a size: 4096, 4.0K, 64M, 1.5GiB → bytes
    EXPRESSION                  anything else: a comparison over names, numbers and + - * / ( ),
                                abs/min/max; e.g. `upper_bytes >= 60 * MiB`, `ext4_ms / xfs_ms > 10`

Names live for the whole lab, so a later step can compare with an earlier one. KiB, MiB, GiB
and TiB are predefined. A `#` outside quotes starts a comment: say why the margin is what it is.
"""

from __future__ import annotations

import ast
import operator
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cowlab.base import units
from cowlab.base.errors import CowlabError

UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ExpectError(CowlabError):
    pass


@dataclass
class Expectation:
    kind: str  # exit, contains, matches, let, expr
    text: str  # the line as written
    arg: str = ""
    negate: bool = False
    name: str = ""
    size: bool = False
    code: int = 0

    @property
    def wants_failure(self) -> bool:
        return self.kind == "exit" and ((self.negate and self.code == 0) or (not self.negate and self.code != 0))


@dataclass
class Outcome:
    ok: bool
    text: str
    detail: str = ""


def parse_expectations(block: str, where: str) -> list[Expectation]:
    out = []
    for raw in block.splitlines():
        if not raw.strip() or raw.strip().startswith("#"):
            continue
        try:
            out.append(parse_line(raw))
        except ExpectError as e:
            raise CowlabError(f"{where}: expectation {raw.strip()!r}: {e}") from None
    return out


def _words(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=False)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError as e:
        raise ExpectError(str(e)) from None


def _strip_comment(line: str) -> str:
    """The line without a trailing # comment (a # inside quotes stays)."""
    q = None
    for i, ch in enumerate(line):
        if q:
            if ch == q:
                q = None
        elif ch in "\"'":
            q = ch
        elif ch == "#":
            return line[:i].rstrip()
    return line.rstrip()


def parse_line(raw: str) -> Expectation:
    text = raw.strip()
    w = _words(text)
    if not w:
        raise ExpectError("empty")
    negate = False
    if w[0] == "not" and len(w) > 1 and w[1] in ("contains", "matches"):
        negate, w = True, w[1:]
    head = w[0]
    if head == "exit":
        if len(w) == 2 and w[1].lstrip("-").isdigit():
            return Expectation("exit", text, code=int(w[1]))
        if len(w) == 3 and w[1] == "!=" and w[2].isdigit():
            return Expectation("exit", text, negate=True, code=int(w[2]))
        raise ExpectError("write `exit N` or `exit != N`")
    if head in ("contains", "matches"):
        if len(w) != 2:
            raise ExpectError(f'write {head} "..." (quote the text)')
        if head == "matches":
            try:
                re.compile(w[1])
            except re.error as e:
                raise ExpectError(f"bad regex: {e}") from None
        return Expectation(head, text, arg=w[1], negate=negate)
    if head == "let":
        size = len(w) == 5 and w[3] == "size"
        if not ((len(w) == 4 or size) and w[2] == "=" and _NAME.match(w[1])):
            raise ExpectError('write let NAME = "REGEX" or let NAME = size "REGEX"')
        pattern = w[-1]
        try:
            re.compile(pattern)
        except re.error as e:
            raise ExpectError(f"bad regex: {e}") from None
        if w[1] in UNITS:
            raise ExpectError(f"{w[1]} is a predefined unit")
        return Expectation("let", text, arg=pattern, name=w[1], size=size)
    expr = _strip_comment(text)
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ExpectError("not an expectation (exit, contains, matches, let, or a comparison)") from None
    if not isinstance(tree.body, (ast.Compare, ast.BoolOp)) and not (
        isinstance(tree.body, ast.UnaryOp) and isinstance(tree.body.op, ast.Not)
    ):
        raise ExpectError("an expression expectation must compare something (>=, <, ==, ...)")
    _check_ast(tree)
    return Expectation("expr", text, arg=expr)


def parse_size(s: str) -> float:
    """'4096' → 4096, '4.0K' → 4096, '64M'/'64MiB'/'64MB' → 64 MiB (du/ls/df -h are binary)."""
    try:
        return units.parse_size(s)
    except CowlabError:
        raise ExpectError(f"{s!r} is not a size") from None


def evaluate(e: Expectation, output: str, rc: int, errors: list[str], names: dict) -> Outcome:
    if e.kind == "exit":
        ok = (rc != e.code) if e.negate else (rc == e.code)
        return Outcome(ok, e.text, f"exit status {rc}")
    if e.kind == "contains":
        found = e.arg in output
        return Outcome(found != e.negate, e.text, "found" if found else "not in the output")
    if e.kind == "matches":
        m = re.search(e.arg, output, re.M)
        return Outcome(bool(m) != e.negate, e.text, f"matched {m.group(0)!r}" if m else "no line matches")
    if e.kind == "let":
        m = re.search(e.arg, output, re.M)
        if not m:
            return Outcome(False, e.text, "no line matches, so nothing to read")
        s = m.group(1) if m.groups() else m.group(0)
        try:
            v = parse_size(s) if e.size else _number(s)
        except ExpectError as err:
            return Outcome(False, e.text, str(err))
        names[e.name] = v
        return Outcome(True, e.text, f"{e.name} = {_show(v)}")
    try:
        v = _eval(ast.parse(e.arg, mode="eval").body, {**UNITS, **names})
    except NameError as err:
        return Outcome(False, e.text, str(err))
    except (ZeroDivisionError, TypeError) as err:
        return Outcome(False, e.text, f"{type(err).__name__}: {err}")
    shown = ", ".join(f"{n} = {_show(names[n])}" for n in sorted(_names(e.arg)) if n in names)
    return Outcome(bool(v), e.text, shown)


def _number(s: str):
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return s


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _names(expr: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}


_BIN: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMP: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_FUNCS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max, "round": round}
_ALLOWED = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.BoolOp,
    ast.Name,
    ast.Constant,
    ast.Load,
    ast.Call,
    ast.And,
    ast.Or,
    ast.Not,
    ast.USub,
    ast.UAdd,
    *_BIN,
    *_CMP,
)


def _check_ast(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExpectError(f"{type(node).__name__} is not allowed in an expectation")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            raise ExpectError(f"only {', '.join(_FUNCS)} may be called")


def _eval(n: ast.AST, env: dict):
    if isinstance(n, ast.Constant):
        return n.value
    if isinstance(n, ast.Name):
        if n.id not in env:
            raise NameError(f"{n.id} is not defined (no earlier `let {n.id} = ...` matched)")
        return env[n.id]
    if isinstance(n, ast.BinOp):
        return _BIN[type(n.op)](_eval(n.left, env), _eval(n.right, env))
    if isinstance(n, ast.UnaryOp):
        v = _eval(n.operand, env)
        return _UNARY[type(n.op)](v)
    if isinstance(n, ast.BoolOp):
        vals = (_eval(v, env) for v in n.values)
        return all(vals) if isinstance(n.op, ast.And) else any(vals)
    if isinstance(n, ast.Compare):
        left = _eval(n.left, env)
        for op, right in zip(n.ops, n.comparators, strict=True):
            r = _eval(right, env)
            if not _CMP[type(op)](left, r):
                return False
            left = r
        return True
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):  # _check_ast allows no other call
        return _FUNCS[n.func.id](*[_eval(a, env) for a in n.args])
    raise ExpectError(f"{type(n).__name__} is not allowed")
