from __future__ import annotations

from typing import Any

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from orchestrator.errors import JourneyError
from orchestrator.journeys.expressions import (
    BRANCH_NAMES,
    SEGMENT_NAMES,
    Call,
    compile_expression,
)


def test_segment_over_user_fields() -> None:
    segment = compile_expression("tier == 'at_risk' and churn_score >= 0.6")
    assert segment.names == {"tier", "churn_score"}
    assert segment.evaluate({"tier": "at_risk", "churn_score": 0.7}) is True
    assert segment.evaluate({"tier": "at_risk", "churn_score": 0.5}) is False
    assert not segment.unknown_names(SEGMENT_NAMES)


def test_branch_functions_are_supplied_at_evaluation() -> None:
    condition = compile_expression("not joined('invite') and not event('order_placed', '1d')")
    assert condition.calls == (
        Call("joined", ("invite",)),
        Call("event", ("order_placed", "1d")),
    )
    assert not condition.unknown_names(BRANCH_NAMES)
    seen: list[Any] = []

    def joined(step: str) -> bool:
        seen.append(step)
        return False

    assert condition.evaluate({"joined": joined, "event": lambda name, within: False}) is True
    assert seen == ["invite"]


def test_attributes_and_user_mapping() -> None:
    expression = compile_expression("attributes.campus == 'north' and user.tier != 'active'")
    assert expression.evaluate({"attributes": {"campus": "north"}, "user": {"tier": "x"}})


def test_missing_name_raises_undefined() -> None:
    with pytest.raises(UndefinedError, match="'tier' is undefined"):
        compile_expression("tier == 'active'").evaluate({})


def test_none_comparison_raises_type_error() -> None:
    with pytest.raises(TypeError):
        compile_expression("churn_score >= 0.6").evaluate({"churn_score": None})


@pytest.mark.parametrize(
    "source",
    [
        "user.__class__.__mro__",
        "().__class__.__bases__[0].__subclasses__()",
        "user.update({'x': 1}).__globals__",
    ],
)
def test_sandbox_refuses_internals(source: str) -> None:
    with pytest.raises((SecurityError, UndefinedError)):
        compile_expression(source).evaluate({"user": {}})


def test_python_eval_is_never_used() -> None:
    # In Python this would import os; as a Jinja expression the name is simply undefined.
    with pytest.raises(UndefinedError, match="'__import__' is undefined"):
        compile_expression("__import__('os').system('true')").evaluate({})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("tier ==", "unexpected end of expression"),
        ("tier = 'x'", "unexpected '='"),
        ("tier == 1 2", "unexpected 2"),
    ],
)
def test_syntax_error_is_a_positioned_problem(source: str, message: str) -> None:
    with pytest.raises(JourneyError) as caught:
        compile_expression(source, where=("journeys/j.yaml", 4, 12))
    assert str(caught.value) == (
        f"journeys/j.yaml:4:12: expression {source!r} does not compile: {message}"
    )


def test_syntax_error_without_position() -> None:
    with pytest.raises(JourneyError, match=r"^<expression>:1:1: expression 'a b'"):
        compile_expression("a b")
