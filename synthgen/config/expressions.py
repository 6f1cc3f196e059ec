"""The `keep_if` expression language: its grammar, checked at config load.

An expression is Python syntax restricted to: `and` / `or` / `not`; comparisons (`==`,
`!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`); arithmetic (`+ - * / // %`, unary `-`);
literals (strings, numbers, `True`, `False`, `None`) and list / tuple literals; column names,
dotted when they name a stage's field (`judge.score`). Anything else (calls, subscripts,
lambdas, comprehensions, attribute access on anything but a name, dunder names) is an error
naming where the expression came from and the offending part. Evaluation over rows lives in
`synthgen.stages.expr`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

ALLOWED_HELP = (
    "allowed: column names (judge.score), literals, list/tuple literals, comparisons "
    "(== != < <= > >= in, not in), and/or/not, + - * / // % and unary -"
)

_BOOL_OPS = (ast.And, ast.Or)
_UNARY_OPS = (ast.Not, ast.USub, ast.UAdd)
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_CMP_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_LITERALS = (str, int, float, bool, type(None))

_KIND = {
    ast.Call: "a function call",
    ast.Subscript: "a subscript",
    ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.IfExp: "a conditional expression",
    ast.Dict: "a dict literal",
    ast.Set: "a set literal",
    ast.NamedExpr: "an assignment",
    ast.JoinedStr: "an f-string",
    ast.Starred: "a starred expression",
    ast.Await: "await",
}


class ExpressionError(ValueError):
    """An expression outside the grammar; the message names where and what."""


@dataclass(frozen=True)
class ParsedExpr:
    """A checked expression: its text, its syntax tree and the column names it reads."""

    text: str
    tree: ast.Expression
    names: frozenset[str]


def dotted_name(node: ast.expr) -> str | None:
    """`a` -> 'a', `a.b.c` -> 'a.b.c'; None when the chain does not start at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def parse_expr(text: str, where: str) -> ParsedExpr:
    """Parse and check `text`; `where` prefixes every error (e.g. 'stages[2] (judge): keep_if')."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{where} {text!r}: not an expression ({exc.msg})") from None
    names: set[str] = set()

    def bad(node: ast.AST, what: str) -> ExpressionError:
        return ExpressionError(
            f"{where} {text!r}: {what} `{ast.unparse(node)}` is not allowed ({ALLOWED_HELP})"
        )

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp) and isinstance(node.op, _BOOL_OPS):
            for v in node.values:
                visit(v)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, _UNARY_OPS):
                raise bad(node, "the operator")
            visit(node.operand)
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BIN_OPS):
                raise bad(node, "the operator")
            visit(node.left)
            visit(node.right)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if not isinstance(op, _CMP_OPS):
                    hint = " (use == None / != None)" if isinstance(op, ast.Is | ast.IsNot) else ""
                    raise bad(node, f"the comparison{hint}")
            visit(node.left)
            for c in node.comparators:
                visit(c)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, _LITERALS):
                raise bad(node, "the literal")
        elif isinstance(node, ast.List | ast.Tuple):
            for e in node.elts:
                visit(e)
        elif isinstance(node, ast.Name | ast.Attribute):
            name = dotted_name(node)
            if name is None:
                raise bad(node, "attribute access on something that is not a column name,")
            for part in name.split("."):
                if part.startswith("__"):
                    raise bad(node, "the dunder name")
            names.add(name)
        else:
            kind = _KIND.get(type(node), f"a {type(node).__name__} expression")
            raise bad(node, kind)

    visit(tree.body)
    return ParsedExpr(text, tree, frozenset(names))
