"""Settings declared once, on the dataclass field that holds them.

A recipe key's type is its annotation (a `Literal[...]` lists its choices); `setting(...)` adds what the type
cannot say: the allowed range, whether a resumed run may change it, and a help line. Validation, `recipes keys`,
resume checks, tune's key walk and the command line's choices are all read from the fields, and `conform` is the
one place an annotation becomes a check (recipes and model arguments alike).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal


def finite(v: float | int) -> bool:
    """Not inf or nan (Python ints always are finite, however large: math.isfinite would overflow on them)."""
    return not isinstance(v, float) or math.isfinite(v)


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error line quotes it: its repr, cut at `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class Mismatch(ValueError):
    """A value that does not fit its declaration; the text says what was expected ("expected ...")."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number; None = unbounded on that side."""
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def contains(self, v: float) -> bool:
        lo, hi = self.low, self.high
        return finite(v) and (lo is None or (v >= lo if self.low_inclusive else v > lo)) and (
            hi is None or (v <= hi if self.high_inclusive else v < hi))

    def text(self) -> str:
        """'>= 1', '> 0' or '[0, 1)'."""
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low}"
        return f"{'[' if self.low_inclusive else '('}{self.low}, {self.high}{']' if self.high_inclusive else ')'}"

    def problem(self, v: float) -> str | None:
        if self.contains(v):
            return None
        return f"must be {'in ' if self.high is not None else ''}{self.text()}"


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
            range: Range | tuple | None = None, length: int | None = None, increasing: bool = False,
            resume: bool = False, help: str = "") -> Any:
    """A dataclass field with its declaration: `range` (a Range, or (low, high[, low_inclusive,
    high_inclusive])) of the value or, for a list, of each element; for lists also `length` and `increasing`
    (non-decreasing); `resume` (a resumed run may change it: it extends or rescues a run without making it a
    different experiment) and `help`."""
    if isinstance(range, tuple):
        range = Range(*range)
    meta = {"range": range, "length": length, "increasing": increasing, "resume": resume, "help": help}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def optional_inner(typ: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None` / Optional[T], else (typ, False)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if type(None) in args:
            rest = [a for a in args if a is not type(None)]
            return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return typ, False


def choices(typ: Any) -> tuple | None:
    """The choices of a Literal annotation (also inside `| None`), else None."""
    typ, _ = optional_inner(typ)
    return typing.get_args(typ) if typing.get_origin(typ) is Literal else None


def conform(value: Any, typ: Any, lenient: bool = False) -> Any:
    """`value` as the annotation `typ` wants it, or Mismatch("expected ..."). lenient: also accept the text
    forms a command line gives ("true", "0.5") and numbers for strings; else types must match exactly.
    Bounds are not checked here (see Range)."""
    typ, optional = optional_inner(typ)
    if value is None and optional:
        return None
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is Literal:
        if lenient and isinstance(value, bool) and "true" in args:
            value = "true" if value else "false"
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise Mismatch(f"expected one of {', '.join(map(str, args))}")
        return value
    if typ is bool:
        if lenient and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise Mismatch("expected true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite(value) \
                or int(value) != value or (not lenient and not isinstance(value, int)):
            raise Mismatch("expected an integer")
        return int(value)
    if typ is float:
        if lenient and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite(value) \
                or abs(value) > 1e300:  # a float that large is no setting (and a larger int no float)
            raise Mismatch("expected a finite number")
        return float(value)
    if typ is str:
        if lenient and isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, (str, int, float) if lenient else str) or isinstance(value, bool):
            raise Mismatch("expected a string")
        return str(value)
    if origin in (collections.abc.Sequence, tuple) or typ is tuple:
        if not isinstance(value, (list, tuple)):
            raise Mismatch("expected a list")
        inner = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else None
        if inner is not None:
            return tuple(conform(v, inner, lenient) for v in value)
        return tuple(value)
    if typ in (list, dict) or origin in (list, dict):
        want = origin or typ
        if not isinstance(value, want):
            raise Mismatch(f"expected a {want.__name__}")
        return value
    if typ is Any:
        return value
    raise TypeError(f"no check for annotation {typ!r}")


def type_name(typ: Any) -> str:
    """A short name for listings: int, float, str (also for choices), bool, list, dict."""
    typ, _ = optional_inner(typ)
    if typing.get_origin(typ) is Literal:
        return "str"
    if typing.get_origin(typ) in (tuple, list, collections.abc.Sequence) or typ in (tuple, list):
        return "list"
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


@dataclass(frozen=True)
class Key:
    """One declared setting of a tree of dataclasses, by its dotted name."""
    name: str
    type: Any
    default: Any
    range: Range | None           # of the value, or of each element of a list
    resume: bool
    help: str
    length: int | None = None     # lists: exactly this many elements
    increasing: bool = False      # lists: in non-decreasing order

    @property
    def choices(self) -> tuple | None:
        return choices(self.type)

    @property
    def is_list(self) -> bool:
        return type_name(self.type) == "list"

    def allowed(self) -> str:
        """What is allowed, in words: 'a | b', '>= 0', '[0, 1)', '2 numbers, each in [0, 1)' or ''."""
        if self.choices:
            return " | ".join(map(str, self.choices))
        if not self.is_list:
            return self.range.text() if self.range else ""
        if not (self.range or self.length or self.increasing):
            return ""
        what = "[low, high]" if self.length == 2 and self.increasing else (
            f"{self.length} numbers" if self.length else f"{'increasing ' if self.increasing else ''}numbers")
        each = f", each {'in ' if self.range and self.range.high is not None else ''}{self.range.text()}" \
            if self.range else ""
        return what + each

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the right type ("must be ..." / "expected ..."), or None."""
        if value is None:
            return None
        if not self.is_list:
            return self.range.problem(value) if self.range is not None else None
        ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and (self.range is None or
                                                                             self.range.contains(x)) for x in value)
        ok = ok and (self.length is None or len(value) == self.length) and (
            not self.increasing or list(value) == sorted(value))
        return None if ok else f"expected {self.allowed()}"


def keys_of(cls: type, prefix: str = "") -> list[Key]:
    """Every leaf setting of the dataclass `cls` (nested dataclasses walked), in declaration order."""
    out: list[Key] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            out += keys_of(typ, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        m = f.metadata
        out.append(Key(prefix + f.name, typ, default, m.get("range"), bool(m.get("resume")), m.get("help", ""),
                       m.get("length"), bool(m.get("increasing"))))
    return out
