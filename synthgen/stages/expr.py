"""`keep_if`: evaluating a checked expression over the rows of an Arrow table.

The grammar (and its check, at config load) is `synthgen.config.expressions`. A name reads
the column of that name (`judge.score`, `sample_index`, `finish_reason`), else the prompt
record's metadata key (from the `meta` column). Null semantics: a comparison with a null
side is false, except `x == None` / `x != None`, which test for null; arithmetic with a null
is null (so is division by zero); a row whose result is null is not kept.
"""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from synthgen.config.expressions import ExpressionError, ParsedExpr, dotted_name, parse_expr
from synthgen.errors import ConfigError
from synthgen.stages.columns import column_values

_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMP: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _is_none_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _compare(op: ast.cmpop, left: Any, right: Any, none_literal: bool) -> bool:
    if none_literal and isinstance(op, ast.Eq | ast.NotEq):
        both = left is None and right is None
        return both if isinstance(op, ast.Eq) else not both
    if left is None or right is None:
        return False
    if isinstance(op, ast.In | ast.NotIn):
        found = left in right
        return found if isinstance(op, ast.In) else not found
    return bool(_CMP[type(op)](left, right))


def _eval(node: ast.expr, row: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name | ast.Attribute):
        return row[dotted_name(node) or ""]
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, row) for e in node.elts]
    if isinstance(node, ast.BoolOp):
        value: Any = None
        for v in node.values:
            value = _eval(v, row)
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, row)
        if isinstance(node.op, ast.Not):
            return not value
        if value is None:
            return None
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, row), _eval(node.right, row)
        if left is None or right is None:
            return None
        try:
            return _BIN[type(node.op)](left, right)
        except ZeroDivisionError:
            return None
    if isinstance(node, ast.Compare):
        left_node, left = node.left, _eval(node.left, row)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, row)
            none_literal = _is_none_literal(left_node) or _is_none_literal(right_node)
            if not _compare(op, left, right, none_literal):
                return False
            left_node, left = right_node, right
        return True
    raise TypeError(f"unexpected {type(node).__name__}")  # parse_expr never lets one through


class Expr:
    """A checked `keep_if` expression: `.names` (what it reads), `.evaluate(table)`."""

    def __init__(self, parsed: ParsedExpr, where: str) -> None:
        self.parsed = parsed
        self.where = where
        self.names = parsed.names

    @property
    def text(self) -> str:
        return self.parsed.text

    def _columns(self, table: pa.Table) -> dict[str, list[Any]]:
        cols: dict[str, list[Any]] = {}
        metas: list[dict[str, Any]] | None = None
        for name in sorted(self.names):
            if name in table.column_names:
                cols[name] = column_values(table, name)
                continue
            if "meta" not in table.column_names or "." in name:
                raise ConfigError(
                    f"{self.where} {self.text!r}: no column `{name}` in the rows "
                    f"(columns: {', '.join(table.column_names)})"
                )
            if metas is None:
                metas = [json.loads(m) if m else {} for m in table.column("meta").to_pylist()]
            cols[name] = [m.get(name) for m in metas]
        return cols

    def evaluate(self, table: pa.Table) -> list[bool]:
        """Per row: whether the expression holds (null counts as false)."""
        cols = self._columns(table)
        out = []
        for i in range(table.num_rows):
            row = {name: values[i] for name, values in cols.items()}
            try:
                value = _eval(self.parsed.tree.body, row)
            except TypeError as exc:
                raise ConfigError(
                    f"{self.where} {self.text!r}: {exc} (row {i}: "
                    + ", ".join(f"{k}={v!r}" for k, v in sorted(row.items()))
                    + ")"
                ) from None
            out.append(bool(value) if value is not None else False)
        return out


def compile_expr(text: str, where: str) -> Expr:
    """Check `text` against the grammar; `where` names its origin in every error
    (e.g. 'stages[2] (judge): keep_if')."""
    try:
        return Expr(parse_expr(text, where), where)
    except ExpressionError as exc:
        raise ConfigError(str(exc)) from None
