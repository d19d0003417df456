"""A segment expression as a SQL condition over ``segment_query``'s columns, where SQL can
say exactly what the expression says, so that a million users are segmented in the
database instead of row by row in Python.

The expression is run in Python with Python's rules: ``None == 'x'`` is false, but
``None >= 0.6`` raises and makes the user *not* a member, and ``and``/``or`` stop at the
first operand that decides. The SQL keeps those rules with three values: a condition is
true, false, or NULL for "this would have raised"; ``and``/``or`` are ``CASE`` expressions
that look at their right side only when Python would, and the user is a member when the
whole is true.

What translates: the stored profile columns (``tier``, ``churn_score``, ``recency_days``,
``frequency``, ``monetary``, ``rfm_*``) and the identity columns (``phone``, ``openid``, …,
``sms_opt_out``, ``wechat_followed``); constants; ``and``, ``or``, ``not``; ``==``, ``!=``
between a column and a constant or column of its kind; ``<``, ``<=``, ``>``, ``>=`` between
numbers; ``in`` / ``not in`` a list of constants; a bare column as a truth value. Anything
else (a feature or attribute read from JSON, a string ordering, arithmetic, a filter, a
call) answers ``None``: the caller evaluates the expression in Python instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from jinja2 import nodes
from jinja2.parser import Parser
from sqlalchemy.sql.elements import ColumnElement

from orchestrator.journeys.expressions import EXPRESSION_ENV
from orchestrator.store.tables import USER_FEATURES as FEATURES
from orchestrator.store.tables import USERS

Kind = Literal["text", "number", "bool", "none"]
_Cond = ColumnElement[Any]  # boolean; NULL means "Python would have raised"

COLUMNS: dict[str, tuple[Any, Kind]] = {
    "user_id": (USERS.c.user_id, "text"),
    "tier": (FEATURES.c.tier, "text"),
    "rfm_r": (FEATURES.c.rfm_r, "number"),
    "rfm_f": (FEATURES.c.rfm_f, "number"),
    "rfm_m": (FEATURES.c.rfm_m, "number"),
    "recency_days": (FEATURES.c.recency_days, "number"),
    "frequency": (FEATURES.c.frequency, "number"),
    "monetary": (FEATURES.c.monetary, "number"),
    "churn_score": (FEATURES.c.churn_score, "number"),
    **{name: (USERS.c[name], "text") for name in
       ("openid", "unionid", "external_userid", "wecom_sender", "phone", "timezone")},
    "sms_opt_out": (USERS.c.sms_opt_out, "bool"),
    "wechat_followed": (USERS.c.wechat_followed, "bool"),
}
_ORDER = {"lt": "__lt__", "lteq": "__le__", "gt": "__gt__", "gteq": "__ge__"}


class Untranslatable(Exception):
    """The expression uses something SQL cannot say exactly here."""


@dataclass(frozen=True)
class _Value:
    """An operand: a column (may be NULL) or a constant, and its kind."""

    sql: Any
    kind: Kind
    const: bool = False
    value: Any = None


def segment_condition(source: str) -> ColumnElement[bool] | None:
    """The members of segment ``source`` as a WHERE condition over ``segment_query``'s
    FROM (users outer-joined with user_features), or None when it does not translate."""
    try:
        parser = Parser(EXPRESSION_ENV, source, state="variable")
        ast = parser.parse_expression()
        if not parser.stream.eos:
            return None
        return sa.func.coalesce(_truth(ast), sa.false())
    except Untranslatable:
        return None


def _truth(node: nodes.Node) -> _Cond:
    """A node in a truth position: the condition that it is truthy (NULL: it raises)."""
    if isinstance(node, nodes.And):
        left, right = _truth(node.left), _truth(node.right)
        return sa.case((left.is_(None), sa.null()), (left, right), else_=sa.false())
    if isinstance(node, nodes.Or):
        left, right = _truth(node.left), _truth(node.right)
        return sa.case((left.is_(None), sa.null()), (left, sa.true()), else_=right)
    if isinstance(node, nodes.Not):
        return sa.not_(_truth(node.node))
    if isinstance(node, nodes.Compare):
        return _compare(node)
    value = _value(node)
    return _truthy(value)


def _truthy(value: _Value) -> _Cond:
    if value.const:
        return sa.true() if value.value else sa.false()
    column = value.sql
    if value.kind == "bool":
        return sa.func.coalesce(column, sa.false())
    if value.kind == "text":
        return sa.func.coalesce(column != "", sa.false())
    return sa.func.coalesce(column != 0, sa.false())


def _value(node: nodes.Node) -> _Value:
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in COLUMNS:
        column, kind = COLUMNS[node.name]
        return _Value(column, kind)
    if isinstance(node, nodes.Neg) and isinstance(node.node, nodes.Const):
        inner = _const(node.node.value)
        if inner.kind == "number":
            return _const(-node.node.value)
    if isinstance(node, nodes.Const):
        return _const(node.value)
    raise Untranslatable(type(node).__name__)


def _const(value: Any) -> _Value:
    if value is None:
        return _Value(sa.null(), "none", const=True, value=None)
    if isinstance(value, bool):
        return _Value(sa.literal(value, sa.Boolean()), "bool", const=True, value=value)
    if isinstance(value, int | float):
        kind_type = sa.Float() if isinstance(value, float) else sa.BigInteger()
        return _Value(sa.literal(value, kind_type), "number", const=True, value=value)
    if isinstance(value, str):
        return _Value(sa.literal(value, sa.String()), "text", const=True, value=value)
    raise Untranslatable(type(value).__name__)


def _compare(node: nodes.Compare) -> _Cond:
    """``a op b op c …``: Python's chain, ``a op b and b op c``, stopping at the first false."""
    left = _value(node.expr)
    if any(o.op in ("in", "notin") for o in node.ops):
        if len(node.ops) > 1:
            raise Untranslatable("membership in a chain")
        [operand] = node.ops
        return _member(left, operand.expr, negate=operand.op == "notin")
    result: _Cond | None = None
    for operand in node.ops:
        right = _value(operand.expr)
        step = _pair(left, operand.op, right)
        result = step if result is None else sa.case(
            (result.is_(None), sa.null()), (result, step), else_=sa.false())
        left = right
    assert result is not None
    return result


def _pair(left: _Value, op: str, right: _Value) -> _Cond:
    if left.const and right.const:
        raise Untranslatable("constant comparison")
    if op in ("eq", "ne"):
        equal = _equal(left, right)
        return sa.not_(equal) if op == "ne" else equal
    if op in _ORDER and left.kind == "number" and right.kind == "number":
        # A NULL column raises in Python (None < 0.6): NULL here too.
        return getattr(left.sql, _ORDER[op])(right.sql)  # type: ignore[no-any-return]
    raise Untranslatable(f"{op} between {left.kind} and {right.kind}")


def _equal(left: _Value, right: _Value) -> _Cond:
    """Python's ``==``: never raises; None equals only None; text never equals a number."""
    kinds = {left.kind, right.kind}
    if "none" in kinds:
        other = right if left.kind == "none" else left
        return other.sql.is_(None)  # type: ignore[no-any-return]
    if len(kinds) == 2:
        if kinds & {"bool"} and kinds & {"number"}:
            raise Untranslatable("True == 1 in Python")  # rare; Python decides
        return sa.false()
    return left.sql.is_not_distinct_from(right.sql)  # type: ignore[no-any-return]


def _member(left: _Value, node: nodes.Node, *, negate: bool) -> _Cond:
    if left.const or not isinstance(node, nodes.List | nodes.Tuple):
        raise Untranslatable("membership")
    items = [_value(item) for item in node.items]
    if not all(item.const for item in items):
        raise Untranslatable("membership in non-constants")
    tests = [_equal(left, item) for item in items]
    found = sa.or_(*tests) if tests else sa.false()
    return sa.not_(found) if negate else found
