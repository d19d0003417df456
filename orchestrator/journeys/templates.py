"""Static facts about message templates: syntax, free variables, includes, the article title.

Validation asks the catalog; it reads and parses each template file once per run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import TemplateSyntaxError, meta, nodes

from orchestrator.errors import Problem
from orchestrator.journeys.expressions import TEMPLATE_ENV, templates_env


@dataclass(frozen=True)
class TemplateInfo:
    """One parsed template file. ``variables`` maps each free name to its first (line, col)."""

    name: str
    path: Path
    data: bytes
    syntax_problem: Problem | None = None
    variables: dict[str, tuple[int, int]] = field(default_factory=dict)
    includes: tuple[str, ...] = ()
    sets_title: bool = False
    # The title when it is a plain string: (text, line) — its length can be checked statically.
    literal_title: tuple[str, int] | None = None


@dataclass
class TemplateCatalog:
    """Templates below ``templates_dir``, parsed on first use."""

    templates_dir: Path
    _cache: dict[str, TemplateInfo | None] = field(default_factory=dict)

    def get(self, name: str) -> TemplateInfo | None:
        """The template ``name`` (relative path), or ``None`` when the file does not exist."""
        if name not in self._cache:
            self._cache[name] = self._read(name)
        return self._cache[name]

    def closure(self, names: list[str]) -> list[TemplateInfo]:
        """``names`` and every template they include/import/extend, sorted by path."""
        seen: dict[str, TemplateInfo] = {}
        pending = list(names)
        while pending:
            name = pending.pop()
            info = None if name in seen else self.get(name)
            if info is not None:
                seen[name] = info
                pending.extend(info.includes)
        return sorted(seen.values(), key=lambda t: t.name)

    @property
    def files(self) -> list[Path]:
        """Every existing template read so far."""
        return sorted(info.path for info in self._cache.values() if info is not None)

    def _read(self, name: str) -> TemplateInfo | None:
        path = self.templates_dir / name
        if not path.is_file():
            return None
        data = path.read_bytes()
        source = data.decode("utf-8", errors="replace")
        try:
            ast = templates_env(self.templates_dir).parse(source, name, str(path))
        except TemplateSyntaxError as exc:
            problem = Problem(
                str(path), exc.lineno or 1, 1, f"template syntax error: {exc.message}"
            )
            return TemplateInfo(name, path, data, syntax_problem=problem)
        return TemplateInfo(
            name,
            path,
            data,
            variables=_free_variables(ast, source),
            includes=tuple(n for n in meta.find_referenced_templates(ast) if n),
            sets_title=_sets_title(ast),
            literal_title=_literal_title(ast),
        )


def _free_variables(ast: nodes.Template, source: str) -> dict[str, tuple[int, int]]:
    free = meta.find_undeclared_variables(ast) - set(TEMPLATE_ENV.globals)
    lines = source.splitlines()
    found: dict[str, tuple[int, int]] = {}
    for node in ast.find_all(nodes.Name):
        if node.name in free and node.name not in found:
            found[node.name] = (node.lineno, _column(lines, node.lineno, node.name))
    return found


def _column(lines: list[str], lineno: int, name: str) -> int:
    text = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    match = re.search(rf"(?<![\w.]){re.escape(name)}\b", text)
    return match.start() + 1 if match else 1


def _literal_title(ast: nodes.Template) -> tuple[str, int] | None:
    for node in ast.body:
        if (
            isinstance(node, nodes.Assign)
            and isinstance(node.target, nodes.Name)
            and node.target.name == "title"
            and isinstance(node.node, nodes.Const)
            and isinstance(node.node.value, str)
        ):
            return node.node.value, node.lineno
    return None


def _sets_title(ast: nodes.Template) -> bool:
    """Does the template assign ``title`` at top level (exported on its module)?"""
    for node in ast.body:
        target = getattr(node, "target", None)
        if isinstance(node, nodes.Assign | nodes.AssignBlock) and isinstance(target, nodes.Name):
            if target.name == "title":
                return True
    return False
