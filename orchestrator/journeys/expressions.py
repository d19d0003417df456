"""Sandboxed Jinja2 expressions (segments, branch conditions) and the template environment.

Never Python ``eval``: an expression is parsed and run by ``jinja2.sandbox``, which refuses
attribute access to internals (``__class__``…) and unsafe calls. ``StrictUndefined`` turns
a missing name into an error instead of a silent empty value.

Names an expression may use (``docs/journeys.md`` documents them for operators):

- segments (``entry.segment``): ``SEGMENT_NAMES`` (user columns, derived profile fields,
  ``user``, ``attributes``, ``features``);
- branches (``if``): ``BRANCH_NAMES`` = the segment names plus the functions the engine
  supplies when it evaluates: ``sent(step)``, ``delivered(step)``, ``clicked(step)``,
  ``joined(step)``, ``event(name, within)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, TemplateSyntaxError, Undefined, nodes
from jinja2.parser import Parser

from orchestrator.errors import JourneyError, Problem
from orchestrator.journeys.bounded import SANDBOX, BoundedSandbox
from orchestrator.journeys.suggest import did_you_mean

# users.csv columns a template or expression may name directly (besides user_id).
USER_COLUMNS = ("openid", "unionid", "external_userid", "wecom_sender", "phone", "timezone")
USER_FIELDS = ("user_id", *USER_COLUMNS, "sms_opt_out", "wechat_followed")
# Derived per user by the audience part (store table user_features).
PROFILE_FIELDS = (
    "tier",
    "churn_score",
    "recency_days",
    "frequency",
    "monetary",
    "rfm_r",
    "rfm_f",
    "rfm_m",
)
SEGMENT_NAMES = frozenset((*USER_FIELDS, *PROFILE_FIELDS, "user", "attributes", "features"))
STEP_FUNCTIONS = ("sent", "delivered", "clicked", "joined")
BRANCH_FUNCTIONS = (*STEP_FUNCTIONS, "event")
BRANCH_NAMES = SEGMENT_NAMES | frozenset(BRANCH_FUNCTIONS)

# One sandbox for everything (``orchestrator.journeys.bounded``): expressions, links, texts.
EXPRESSION_ENV = TEMPLATE_ENV = SANDBOX
TEMPLATE_CACHE_SIZE = 400


@lru_cache(maxsize=32)
def templates_env(templates_dir: Path, *, html: bool = False) -> BoundedSandbox:
    """The sandbox reading from ``templates_dir``; ``html``: autoescape on (article bodies
    are HTML; SMS and invite texts are plain text and never escaped). Each overlay keeps its
    own compiled templates: the same file compiles differently with and without escaping."""
    overlay = SANDBOX.overlay(
        loader=FileSystemLoader(str(templates_dir)), autoescape=html,
        cache_size=TEMPLATE_CACHE_SIZE,
    )
    assert isinstance(overlay, BoundedSandbox)
    return overlay


@dataclass(frozen=True)
class Call:
    """A call in an expression, e.g. ``joined('invite')`` → ``Call('joined', ('invite',))``.

    ``args`` holds literal arguments; a non-literal argument is ``None``.
    """

    name: str
    args: tuple[Any, ...]


class Expression:
    """A compiled sandboxed expression; ``evaluate`` runs it over a context mapping."""

    def __init__(self, source: str, ast: nodes.Expr) -> None:
        self.source = source
        self.names = frozenset(n.name for n in ast.find_all(nodes.Name) if n.ctx == "load")
        self.calls = tuple(_calls(ast))
        self._run = EXPRESSION_ENV.compile_expression(source, undefined_to_none=False)

    def unknown_names(self, known: Iterable[str]) -> list[str]:
        """Names the expression uses that ``known`` does not provide, sorted."""
        return sorted(self.names - set(known))

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The value of the expression over ``context``.

        Raises ``jinja2.UndefinedError`` when the expression names something the context
        lacks, ``TypeError`` for an impossible operation (``None >= 0.6`` for a user never
        scored) and ``jinja2.sandbox.SecurityError`` for unsafe access; callers decide what
        such a user means (a segment treats it as "not a member").
        """
        value = self._run(**context)
        if isinstance(value, Undefined):
            str(value)  # StrictUndefined raises here, naming what was missing
        return value

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str, *, where: tuple[str, int, int] | None = None) -> Expression:
    """Parse ``source`` as one Jinja2 expression.

    Raises ``JourneyError`` with one ``Problem`` at ``where`` (file, line, col; default
    ``<expression>:1:1``) when it does not compile.
    """
    return _compile(source, where or ("<expression>", 1, 1))


@lru_cache(maxsize=1024)
def _compile(source: str, where: tuple[str, int, int]) -> Expression:
    try:
        parser = Parser(EXPRESSION_ENV, source, state="variable")
        ast = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise TemplateSyntaxError(f"unexpected {token.value!r}", token.lineno)
        return Expression(source, ast)
    except TemplateSyntaxError as exc:
        file, line, col = where
        reason = (exc.message or "").replace("'end of template'", "end of expression")
        reason = reason.replace("end of template", "end of expression")
        message = f"expression {source!r} does not compile: {reason}"
        raise JourneyError([Problem(file, line, col, message)]) from None


def check_names(expression: Expression, known: frozenset[str], what: str) -> None:
    """Raise ``ValueError`` naming the first name ``expression`` uses that is not ``known``."""
    for name in expression.unknown_names(known):
        hint = did_you_mean(name, known) or "; a custom user attribute is attributes.NAME"
        raise ValueError(f"{what} uses unknown name {name!r}{hint}")


def _calls(ast: nodes.Node) -> Iterable[Call]:
    for call in ast.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name):
            args = tuple(a.value if isinstance(a, nodes.Const) else None for a in call.args)
            yield Call(call.node.name, args)
