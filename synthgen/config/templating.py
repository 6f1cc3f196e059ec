"""What a stage's Jinja2 template reads: the names it uses and the fields it reads of them.

Pure syntax (the jinja2 AST), no rendering: the config checks every name a template uses
at load time; `synthgen.stages.template` renders. `{{ judge.score }}` is seen as the name
`judge` with the field `score` (so is `{{ judge["score"] }}`); a method call such as
`{{ instruction.strip() }}` reads no field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


@dataclass(frozen=True)
class TemplateVars:
    """The undeclared names a template reads, and per name the fields it reads of it."""

    names: frozenset[str]
    fields: dict[str, frozenset[str]] = field(default_factory=dict)


class TemplateError(ValueError):
    """A template does not parse; the message is jinja2's, with the line."""


_PARSER = ImmutableSandboxedEnvironment()


def template_vars(source: str) -> TemplateVars:
    """The names `source` reads from its context and, per name, the fields it reads
    (`judge.score` and `judge['score']` -> ('judge', 'score'))."""
    try:
        tree = _PARSER.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"invalid template (line {exc.lineno}): {exc.message}") from None
    names = frozenset(meta.find_undeclared_variables(tree))
    calls = {id(c.node) for c in tree.find_all(nodes.Call)}
    fields: dict[str, set[str]] = {}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        if not isinstance(base, nodes.Name) or base.name not in names or id(node) in calls:
            continue
        if isinstance(node, nodes.Getattr):
            attr = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attr = node.arg.value
        else:
            continue
        fields.setdefault(base.name, set()).add(attr)
    return TemplateVars(names, {k: frozenset(v) for k, v in fields.items()})
