"""YAML that remembers where every key and value was, and pydantic errors mapped back to it.

PyYAML's ``compose`` keeps a start mark on every node; we build plain Python data from the
nodes and record, per path (``("steps", 3, "then")``), the line and column of the key and
of the value, so that any problem can be reported as ``FILE:LINE:COL: message``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import Problem
from orchestrator.journeys.model import (
    STEP_KEYWORDS,
    BranchStep,
    ExitStep,
    JourneySpec,
    SendStep,
    WaitStep,
)
from orchestrator.journeys.suggest import did_you_mean

PathKey = tuple[Any, ...]
Position = tuple[int, int]

_STEP_MODELS: dict[type[BaseModel], str] = {
    SendStep: "send",
    WaitStep: "wait",
    BranchStep: "branch",
    ExitStep: "exit",
}


@dataclass
class YamlDocument:
    """Plain data of one YAML file plus the position of every key and value in it."""

    file: str
    data: Any
    values: dict[PathKey, Position] = field(default_factory=dict)
    keys: dict[PathKey, Position] = field(default_factory=dict)

    def position(self, path: PathKey, *, key: bool = False) -> Position:
        """Where ``path`` is (its key when ``key``), else its nearest existing parent."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            if path[:end] in self.values:
                return self.values[path[:end]]
        return (1, 1)

    def problem(
        self, path: PathKey, message: str, *, key: bool = False, severity: str = "error"
    ) -> Problem:
        line, col = self.position(path, key=key)
        return Problem(self.file, line, col, message, severity)


def read_yaml(text: str, file: str) -> tuple[YamlDocument | None, list[Problem]]:
    """Parse ``text``; on a syntax error return no document and the problem."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character: refused before parsing
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return None, [Problem(file, line, col, f"YAML cannot contain the control character "
                                               f"#x{exc.character:04x}; remove it")]
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [Problem(file, 1, 1, "empty file: expected a mapping of keys")]
        doc = YamlDocument(file, None)
        problems: list[Problem] = []
        doc.data = _build(node, (), loader, doc, problems)
        return doc, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "unreadable YAML"
        return None, [Problem(file, line, col, f"YAML syntax error: {reason}")]
    except yaml.YAMLError as exc:  # an unmarked error (e.g. a character mid-stream)
        return None, [Problem(file, 1, 1, f"YAML syntax error: {exc}")]
    except RecursionError:
        return None, [Problem(file, 1, 1, "YAML nested too deeply to read")]
    finally:
        loader.dispose()


def _mark(node: yaml.Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _build(
    node: yaml.Node,
    path: PathKey,
    loader: yaml.SafeLoader,
    doc: YamlDocument,
    problems: list[Problem],
) -> Any:
    doc.values.setdefault(path, _mark(node))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                problems.append(Problem(doc.file, *_mark(key_node), "a key must be plain text"))
                continue
            child = (*path, key)
            if key in result:
                first_line = doc.keys[child][0]
                problems.append(
                    Problem(
                        doc.file,
                        *_mark(key_node),
                        f"duplicate key {key!r} (first at line {first_line})",
                    )
                )
                continue
            doc.keys[child] = _mark(key_node)
            doc.values[child] = _mark(value_node)
            result[key] = _build(value_node, child, loader, doc, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, i), loader, doc, problems) for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


# ---------------------------------------------------------------- pydantic errors → Problems


def validation_problems(
    exc: ValidationError, doc: YamlDocument, model: type[BaseModel]
) -> list[Problem]:
    """One ``Problem`` per pydantic error, positioned on the offending key or value."""
    return [_problem(error, doc, model) for error in exc.errors()]


def _problem(error: ErrorDetails, doc: YamlDocument, model: type[BaseModel]) -> Problem:
    loc = tuple(error["loc"])
    path = _without_tags(loc)
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if path and path[-1] == "[key]":
        path = path[:-1]
        return doc.problem(path, _plain(error), key=True)
    if kind == "extra_forbidden":
        return doc.problem(path, _unknown_key(model, loc), key=True)
    if kind == "missing":
        return doc.problem(path, f"missing required key {path[-1]!r}")
    path = (*path, *ctx.get("path", ()))
    return doc.problem(path, _message(error, path))


def _without_tags(loc: tuple[Any, ...]) -> PathKey:
    """Drop the discriminator tag pydantic puts after a step's index."""
    if len(loc) > 2 and loc[0] == "steps" and isinstance(loc[1], int):
        if loc[2] in STEP_KEYWORDS.values():
            return (*loc[:2], *loc[3:])
    return loc


def _dotted(path: PathKey) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the file"


def _plain(error: ErrorDetails) -> str:
    ctx = error.get("ctx") or {}
    if "error" in ctx:
        return str(ctx["error"])
    if "message" in ctx:
        return str(ctx["message"])
    return error["msg"]


def _message(error: ErrorDetails, path: PathKey) -> str:
    kind, ctx, value, where = error["type"], error.get("ctx") or {}, error["input"], _dotted(path)
    if kind in ("value_error", "assertion_error", "recall", "step_kind"):
        return _plain(error)
    if kind == "literal_error":
        return f"{where} must be {ctx['expected']}, not {value!r}"
    if kind.startswith("int_"):
        return f"{where} must be a whole number, not {value!r}"
    if kind.startswith("float_"):
        return f"{where} must be a number, not {value!r}"
    if kind.startswith("bool_"):
        return f"{where} must be true or false, not {value!r}"
    if kind == "string_type":
        return f"{where} must be text, not {value!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{where} must be a mapping (key: value), not {value!r}"
    if kind == "list_type":
        return f"{where} must be a list, not {value!r}"
    if kind == "too_short":
        return f"{where} needs at least {ctx.get('min_length', 1)} item(s)"
    if kind == "string_too_short":
        return f"{where} cannot be empty"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{where}: {error['msg'].lower()}, not {value!r}"
    return f"{where}: {error['msg']}"


def _unknown_key(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    key = str(loc[-1])
    model = _model_at(root, loc[:-1])
    if model is None:
        return f"unknown key {key!r}"
    step_kind = _STEP_MODELS.get(model)
    if step_kind and key in STEP_KEYWORDS:
        return (
            f"{key!r} cannot be in a {step_kind} step: a step does one thing "
            "(send, wait, if or exit); split it in two"
        )
    if model is JourneySpec and key in ("version", "source_path"):
        return f"unknown key {key!r}: the loader computes it, remove it"
    allowed = [info.alias or name for name, info in model.model_fields.items()]
    return f"unknown key {key!r}{did_you_mean(key, allowed)}"


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class validating the object at ``loc`` (tags included), if any."""
    current: Any = root
    parts = list(loc)
    while True:
        current = _unwrap(current, parts[0] if parts else None)
        if not parts:
            break
        part = parts.pop(0)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = next((i for n, i in current.model_fields.items() if part in (n, i.alias)), None)
            if info is None:
                return None
            current = info.annotation
        elif origin is list:
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif _is_union(current) and _tagged(current, part) is not None:
            current = _tagged(current, part)
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, next_part: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` until a model, list, dict or tagged union is left."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif _is_union(annotation) and _tagged(annotation, next_part) is None:
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _tagged(union: Any, tag: Any) -> Any:
    for member in typing.get_args(union):
        if typing.get_origin(member) is typing.Annotated:
            inner, *meta = typing.get_args(member)
            if any(getattr(m, "tag", None) == tag for m in meta):
                return inner
    return None
