"""Deterministic instances of a guided constraint, for the fake engine.

`instance(guided, rng)`: a JSON value satisfying a JSON schema (types integer, number,
string, boolean, null, object, array; enum, const, anyOf/oneOf, minimum/maximum,
minLength/maxLength, minItems/maxItems, required), one of the choices, or a string
matching a simple regular expression (literals, classes, `.`, `\\d \\w \\s`, groups,
alternation, repeats). Anything else raises ValueError: the fake engine then returns text
that fails validation, as a model would.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

from synthgen.config.stages import GuidedConfig

try:  # the regular-expression parser of the standard library (sre_parse before 3.11)
    import re._constants as _c
    import re._parser as _p
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

_WORDS = "river stone garden quiet table market window music paper signal forest".split()
_MAX_REPEAT = 3  # an unbounded repeat (* +) produces at most min + this many


def instance(guided: GuidedConfig, rng: random.Random) -> Any:
    if guided.json_schema is not None:
        return json_instance(guided.json_schema, rng)
    if guided.regex is not None:
        return regex_instance(guided.regex, rng)
    return rng.choice(guided.choice or [""])


def json_instance(schema: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    if depth > 8:
        raise ValueError("json_schema nested deeper than 8 levels")
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for alt in ("anyOf", "oneOf"):
        if alt in schema:
            return json_instance(schema[alt][0], rng, depth + 1)
    if "$ref" in schema or "allOf" in schema or "not" in schema:
        raise ValueError("the fake engine does not instantiate $ref, allOf or not")
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        return {
            name: json_instance(sub, rng, depth + 1)
            for name, sub in props.items()
            if name in required or rng.random() < 0.5
        }
    if kind == "array":
        lo = int(schema.get("minItems", 1))
        hi = int(schema.get("maxItems", lo + 2))
        items = schema.get("items", {"type": "string"})
        return [json_instance(items, rng, depth + 1) for _ in range(rng.randint(lo, hi))]
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", lo + 101) - 1)
        if kind == "integer":
            return rng.randint(int(-(-lo // 1)), int(hi // 1))
        return round(rng.uniform(lo, hi), 2)
    if kind == "string":
        if "pattern" in schema:
            return regex_instance(schema["pattern"], rng, full=False)
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        text = text.ljust(int(schema.get("minLength", 0)), "x")
        return text[: int(schema.get("maxLength", len(text)))]
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    raise ValueError(f"json_schema type {kind!r}")


def regex_instance(pattern: str, rng: random.Random, full: bool = True) -> str:
    """A string that `re.fullmatch(pattern)` accepts (`re.search` when not `full`)."""
    try:
        parsed = _p.parse(pattern)
    except re.error as exc:
        raise ValueError(f"regex {pattern!r}: {exc}") from exc
    return _emit(list(parsed), rng)


_CATEGORIES = {
    _c.CATEGORY_DIGIT: string.digits,
    _c.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    _c.CATEGORY_SPACE: " ",
}


def _emit(items: list[Any], rng: random.Random) -> str:
    out = []
    for op, arg in items:
        if op is _c.LITERAL:
            out.append(chr(arg))
        elif op is _c.ANY:
            out.append(rng.choice(string.ascii_lowercase))
        elif op is _c.IN:
            out.append(_one_of(arg, rng))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            lo, hi, sub = arg
            hi = lo + _MAX_REPEAT if hi is _c.MAXREPEAT else hi
            out.extend(_emit(list(sub), rng) for _ in range(rng.randint(lo, hi)))
        elif op is _c.SUBPATTERN:
            out.append(_emit(list(arg[-1]), rng))
        elif op is _c.BRANCH:
            out.append(_emit(list(rng.choice(arg[1])), rng))
        elif op is _c.AT:
            continue  # ^ $ \\b: nothing to emit for whole-string matches
        else:
            raise ValueError(f"regex construct {op} is not supported by the fake engine")
    return "".join(out)


def _one_of(arg: list[Any], rng: random.Random) -> str:
    if arg and arg[0][0] is _c.NEGATE:
        raise ValueError("negated character classes are not supported by the fake engine")
    pool = []
    for op, val in arg:
        if op is _c.LITERAL:
            pool.append(chr(val))
        elif op is _c.RANGE:
            pool.extend(chr(c) for c in range(val[0], min(val[1], val[0] + 25) + 1))
        elif op is _c.CATEGORY and val in _CATEGORIES:
            pool.extend(_CATEGORIES[val])
        else:
            raise ValueError(f"character class item {op} is not supported by the fake engine")
    return rng.choice(pool)
