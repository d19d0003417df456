"""Checks that need a whole journey (its steps, templates, pools and the policy).

They run once the file's structure is valid (``JourneySpec`` validated) and return every
problem they find, each positioned in the journey file or in the template file concerned.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from jinja2 import TemplateSyntaxError, meta

from orchestrator.errors import InputError, Problem
from orchestrator.journeys.covers import thumb_problem
from orchestrator.journeys.durations import format_duration, parse_duration
from orchestrator.journeys.expressions import (
    STEP_FUNCTIONS,
    TEMPLATE_ENV,
    compile_expression,
)
from orchestrator.journeys.model import (
    EXIT,
    BranchStep,
    Cap,
    ExitStep,
    JourneySpec,
    Policy,
    SendStep,
    WaitStep,
)
from orchestrator.journeys.pools import read_codes
from orchestrator.journeys.render import BASE_NAMES, provided_names
from orchestrator.journeys.suggest import did_you_mean
from orchestrator.journeys.templates import TemplateCatalog, TemplateInfo
from orchestrator.journeys.yamldoc import PathKey, YamlDocument

DAY = timedelta(days=1)
# The shortest a calendar period can be (a DST day has 23 h).
_CALENDAR_SHORTEST = {
    "day": timedelta(hours=23),
    "week": timedelta(days=7, hours=-1),
    "month": timedelta(days=28, hours=-1),
}
_MAX_PATHS = 1000


@dataclass
class JourneyCheck:
    """Everything the checks look at for one journey file."""

    spec: JourneySpec
    doc: YamlDocument
    policy: Policy | None
    catalog: TemplateCatalog

    def problem(
        self, path: PathKey, message: str, *, key: bool = False, severity: str = "error"
    ) -> Problem:
        return self.doc.problem(path, message, key=key, severity=severity)

    @cached_property
    def steps(self) -> list[SendStep | WaitStep | BranchStep | ExitStep]:
        return list(self.spec.steps)

    @cached_property
    def first_index(self) -> dict[str, int]:
        """Each step id and the index of its first step."""
        ids: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            if step.id is not None:
                ids.setdefault(step.id, index)
        return ids


def journey_problems(
    spec: JourneySpec, doc: YamlDocument, policy: Policy | None, catalog: TemplateCatalog
) -> list[Problem]:
    """Every semantic problem of one structurally valid journey file."""
    check = JourneyCheck(spec, doc, policy, catalog)
    graph = [*_duplicate_ids(check), *_branch_targets(check)]
    problems = [
        *graph,
        *_reentry(check),
        *_rung_holdouts(check),
        *_branch_calls(check),
        *_pools(check),
        *_templates(check),
        *_covers(check),
        *_policy_override(check),
    ]
    if not graph:
        problems += [*_unreachable(check), *_caps(check)]
    return sorted(set(problems))


# ---------------------------------------------------------------- journey-level


def _rung_holdouts(check: JourneyCheck) -> Iterator[Problem]:
    """A rung holdout skips its step for some users; only a goal measures what that cost."""
    if check.spec.goal is not None:
        return
    for index, step in enumerate(check.spec.steps):
        if isinstance(step, SendStep) and step.holdout:
            yield check.problem(
                ("steps", index, "holdout"),
                f"step {step.id!r} holds {step.holdout:.0%} of its users out, but the journey "
                "has no goal: nothing measures what the step adds; add a goal or remove "
                "the holdout",
                severity="warning",
            )


def _reentry(check: JourneyCheck) -> Iterator[Problem]:
    spec = check.spec
    if spec.goal and spec.reentry is not None and spec.reentry < spec.goal.within:
        yield check.problem(
            ("reentry",),
            f"reentry {format_duration(spec.reentry)} is shorter than goal.within "
            f"{format_duration(spec.goal.within)}: a user could enter again while the last "
            "entry is still measured",
        )


def _pools(check: JourneyCheck) -> Iterator[Problem]:
    journey_dir = Path(check.doc.file).parent
    for name, pool in check.spec.pools.items():
        if name in BASE_NAMES or name in ("event", "link"):
            yield check.problem(
                ("pools", name),
                f"pool name {name!r} is already a template variable; choose another",
                key=True,
            )
        try:
            read_codes(journey_dir / pool.csv)
        except InputError as exc:
            yield check.problem(("pools", name, "csv"), str(exc))


def _policy_override(check: JourneyCheck) -> Iterator[Problem]:
    if check.policy is None or check.spec.policy is None:
        return
    for path, message in check.policy.loosened_by(check.spec.policy):
        yield check.problem(("policy", *path), f"{message}: a journey may only tighten the policy")


# ---------------------------------------------------------------- the step graph


def _duplicate_ids(check: JourneyCheck) -> Iterator[Problem]:
    first = check.first_index
    for index, step in enumerate(check.steps):
        if step.id is not None and first[step.id] != index:
            line = check.doc.position(("steps", first[step.id], "id"))[0]
            yield check.problem(
                ("steps", index, "id"), f"duplicate step id {step.id!r} (first at line {line})"
            )


def _branch_targets(check: JourneyCheck) -> Iterator[Problem]:
    ids = check.first_index
    for index, step in enumerate(check.steps):
        if not isinstance(step, BranchStep):
            continue
        for key, target in (("then", step.then), ("else", step.else_)):
            if target == EXIT:
                continue
            if target not in ids:
                yield check.problem(
                    ("steps", index, key),
                    f"branch target {target!r} is not a step id or exit"
                    f"{did_you_mean(target, [*ids, EXIT])}",
                )
            elif ids[target] <= index:
                yield check.problem(
                    ("steps", index, key),
                    f"branch target {target!r} is not after this branch: "
                    "branches go forward only (no loops)",
                )


def _successors(check: JourneyCheck, index: int) -> list[int]:
    step = check.steps[index]
    if isinstance(step, ExitStep):
        return []
    if isinstance(step, BranchStep):
        ids = check.first_index
        return sorted({ids[t] for t in step.targets if t != EXIT})
    return [index + 1] if index + 1 < len(check.steps) else []


def _unreachable(check: JourneyCheck) -> Iterator[Problem]:
    reached, pending = {0}, [0]
    while pending:
        for nxt in _successors(check, pending.pop()):
            if nxt not in reached:
                reached.add(nxt)
                pending.append(nxt)
    for index, step in enumerate(check.steps):
        if index not in reached:
            name = repr(step.id) if step.id else f"#{index + 1} ({step.kind})"
            yield check.problem(
                ("steps", index), f"unreachable step {name}: no path from the first step leads here"
            )


def _paths(check: JourneyCheck) -> list[list[int]]:
    """Every route through the steps (forward-only, so finite), capped at a sane number."""
    done: list[list[int]] = []
    pending = [[0]]
    while pending and len(done) < _MAX_PATHS:
        path = pending.pop()
        following = _successors(check, path[-1])
        if not following:
            done.append(path)
        pending.extend([*path, n] for n in following)
    return done


# ---------------------------------------------------------------- branch conditions


def _branch_calls(check: JourneyCheck) -> Iterator[Problem]:
    for index, step in enumerate(check.steps):
        if isinstance(step, BranchStep):
            for call in compile_expression(step.if_).calls:
                if call.name in STEP_FUNCTIONS:
                    yield from _step_call(check, index, call.name, call.args)
                elif call.name == "event":
                    yield from _event_call(check, index, call.args)


def _step_call(
    check: JourneyCheck, index: int, name: str, args: tuple[object, ...]
) -> Iterator[Problem]:
    where = ("steps", index, "if")
    if len(args) != 1 or not isinstance(args[0], str):
        yield check.problem(where, f"{name}() takes one step id in quotes, e.g. {name}('article')")
        return
    target = args[0]
    sends = {s.id: i for i, s in enumerate(check.steps) if isinstance(s, SendStep)}
    if target not in sends:
        hint = did_you_mean(target, sends)
        yield check.problem(where, f"{name}({target!r}): there is no send step {target!r}{hint}")
        return
    sent = check.steps[sends[target]]
    assert isinstance(sent, SendStep)
    if sends[target] > index:
        yield check.problem(where, f"{name}({target!r}): step {target!r} comes after this branch")
    elif name == "joined" and sent.send != "wecom_group_invite":
        yield check.problem(
            where,
            f"joined({target!r}): joined() is for wecom_group_invite steps; "
            f"{target!r} sends {sent.send}",
        )
    elif name == "clicked" and sent.send == "wechat_article" and not (
        sent.link or sent.landing
    ):
        yield check.problem(
            where,
            f"clicked({target!r}): a mass-sent article reports no per-user clicks; give step "
            f"{target!r} a link (tracked per recipient, sent by template message) or a "
            "landing (a fixed-link landing page that identifies the reader), else this is "
            "always false",
            severity="warning",
        )


def _event_call(check: JourneyCheck, index: int, args: tuple[object, ...]) -> Iterator[Problem]:
    where = ("steps", index, "if")
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
        yield check.problem(
            where, "event() takes an event name and a duration, e.g. event('order_placed', '7d')"
        )
        return
    if len(args) == 2 and args[1] is not None:
        try:
            parse_duration(args[1])  # type: ignore[arg-type]
        except ValueError as exc:
            yield check.problem(where, f"event({args[0]!r}, …): {exc}")


# ---------------------------------------------------------------- templates


def _templates(check: JourneyCheck) -> Iterator[Problem]:
    for index, step in enumerate(check.steps):
        if isinstance(step, SendStep):
            yield from _step_templates(check, index, step)
            yield from _step_link(check, index, step)


def _template_refs(step: SendStep, index: int) -> list[tuple[PathKey, str]]:
    if step.variants is None:
        return [(("steps", index, "template"), step.template or "")]
    return [
        (("steps", index, "variants", name, "template"), v.template)
        for name, v in step.variants.items()
    ]


def _step_templates(check: JourneyCheck, index: int, step: SendStep) -> Iterator[Problem]:
    refs = _template_refs(step, index)
    for path, name in refs:
        if check.catalog.get(name) is None:
            yield check.problem(
                path, f"template {name!r} not found in {check.catalog.templates_dir}"
            )
    closure = check.catalog.closure([name for _, name in refs])
    provided = provided_names(check.spec, step)
    for info in closure:
        if info.syntax_problem is not None:
            yield info.syntax_problem
            continue
        for var, (line, col) in sorted(info.variables.items()):
            if var not in provided:
                yield Problem(str(info.path), line, col, _undefined(check, step, var, provided))
    if step.send == "wechat_article" and closure and not any(t.sets_title for t in closure):
        first = check.catalog.get(refs[0][1])
        assert first is not None
        yield Problem(
            str(first.path),
            1,
            1,
            'a wechat_article template must set its title: {% set title = "…" %}',
        )
    if step.send == "wechat_article":
        yield from _title_lengths(closure)
    parsed = closure and all(t.syntax_problem is None for t in closure)
    uses_link = any("link" in t.variables for t in closure)
    if step.send == "sms" and step.link and parsed and not uses_link:
        yield check.problem(
            ("steps", index, "link"),
            f"step {step.id!r} has a link that its template never shows: add {{{{ link }}}}",
            severity="warning",
        )


ARTICLE_TITLE_MAX_CHARS = 32  # WeChat's draft/add


def _title_lengths(closure: list[TemplateInfo]) -> Iterator[Problem]:
    for info in closure:
        if info.literal_title is not None:
            title, line = info.literal_title
            if len(title) > ARTICLE_TITLE_MAX_CHARS:
                yield Problem(
                    str(info.path),
                    line,
                    1,
                    f"the article title is {len(title)} characters; WeChat takes at most "
                    f"{ARTICLE_TITLE_MAX_CHARS}: shorten it",
                )


def _undefined(check: JourneyCheck, step: SendStep, var: str, provided: frozenset[str]) -> str:
    where = f"step {step.id!r} of journey {check.spec.id!r}"
    if var == "link":
        return f"undefined variable 'link' for {where}: the step has no link"
    if var == "event":
        return (
            f"undefined variable 'event' for {where}: the journey is entered by a "
            "segment, not an event"
        )
    hint = did_you_mean(var, provided) or "; a user attribute is user.NAME"
    return f"undefined variable {var!r} for {where}{hint}"


def _step_link(check: JourneyCheck, index: int, step: SendStep) -> Iterator[Problem]:
    if not step.link:
        return
    where = ("steps", index, "link")
    try:
        ast = TEMPLATE_ENV.parse(step.link)
    except TemplateSyntaxError as exc:
        yield check.problem(where, f"link does not compile: {exc.message}")
        return
    provided = provided_names(check.spec, step) - {"link"}
    for var in sorted(meta.find_undeclared_variables(ast) - provided - set(TEMPLATE_ENV.globals)):
        hint = did_you_mean(var, provided)
        yield check.problem(where, f"link uses undefined variable {var!r}{hint}")


# ---------------------------------------------------------------- article covers


def _covers(check: JourneyCheck) -> Iterator[Problem]:
    for index, step in enumerate(check.steps):
        if isinstance(step, SendStep) and step.send == "wechat_article":
            yield from _step_cover(check, index, step)


def _step_cover(check: JourneyCheck, index: int, step: SendStep) -> Iterator[Problem]:
    if step.cover is None:
        yield check.problem(
            ("steps", index, "send"),
            f"wechat_article step {step.id!r} has no cover: add cover: PATH (a JPG of at most "
            "64 KB, relative to the templates folder); WeChat refuses an article without one",
        )
        return
    where = ("steps", index, "cover")
    path = cover_path(check.catalog.templates_dir, step.cover)
    if path is None:
        yield check.problem(
            where, f"cover {step.cover!r} must be a path inside the templates folder"
        )
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else exc.strerror
        yield check.problem(
            where, f"cover {step.cover!r} {reason} in {check.catalog.templates_dir}"
        )
        return
    problem = thumb_problem(data)
    if problem is not None:
        yield check.problem(where, f"cover {step.cover!r}: {problem}")


def cover_path(templates_dir: Path, name: str) -> Path | None:
    """The cover file ``name`` under ``templates_dir``; ``None`` if it points outside it."""
    root = templates_dir.resolve()
    path = (templates_dir / name).resolve()
    return path if path.is_relative_to(root) else None


# ---------------------------------------------------------------- caps


@dataclass(frozen=True)
class _Send:
    index: int
    step: SendStep
    earliest: timedelta  # after entry, if nothing is delayed
    slack: timedelta  # the most that windows, quiet hours and deferral can add up to here


def _caps(check: JourneyCheck) -> Iterator[Problem]:
    if check.policy is None:
        return
    policy = check.policy
    if check.spec.policy is not None and not policy.loosened_by(check.spec.policy):
        policy = policy.tightened_by(check.spec.policy)
    for path in _paths(check):
        sends = _timeline(check, path, policy)
        for key, cap in policy.caps.items():
            chosen = sends if key == "global" else [s for s in sends if s.step.send == key]
            yield from _cap_problems(check, key, cap, chosen)


def _timeline(check: JourneyCheck, path: list[int], policy: Policy) -> list[_Send]:
    earliest, slack = timedelta(0), timedelta(0)
    sends: list[_Send] = []
    for index in path:
        step = check.steps[index]
        if isinstance(step, WaitStep):
            earliest += step.wait
            if step.window is not None:
                slack += DAY - step.window.length
        elif isinstance(step, SendStep):
            slack += _send_slack(policy, step.send)
            sends.append(_Send(index, step, earliest, slack))
    return sends


def _send_slack(policy: Policy, channel: str) -> timedelta:
    windows = [
        w for w in (policy.send_hours.get(channel), policy.holiday_send_hours.get(channel)) if w
    ]
    quiet = DAY - min(w.length for w in windows) if windows else timedelta(0)
    return quiet + (policy.max_defer if policy.when_capped == "defer" else timedelta(0))


def _span(first: _Send, last: _Send) -> timedelta:
    """The longest time that can pass between two sends of one enrollment."""
    return (last.earliest - first.earliest) + (last.slack - first.slack)


def _cap_problems(check: JourneyCheck, key: str, cap: Cap, sends: list[_Send]) -> Iterator[Problem]:
    n = cap.max
    if cap.rolling is not None:
        for group in _groups(sends, n + 1):
            if _span(group[0], group[-1]) < cap.rolling:
                yield _never_met(check, key, cap, group)
        return
    assert cap.calendar is not None
    shortest = _CALENDAR_SHORTEST[cap.calendar]
    # Within less than one period, sends fall into at most two periods: more than 2n
    # sends there always overflow one of them; n+1 overflow unless they straddle a boundary.
    certain = [g for g in _groups(sends, 2 * n + 1) if _span(g[0], g[-1]) < shortest]
    for group in certain:
        yield _never_met(check, key, cap, group)
    flagged = {send.index for group in certain for send in group}
    for group in _groups(sends, n + 1):
        if _span(group[0], group[-1]) < shortest and group[-1].index not in flagged:
            yield check.problem(
                ("steps", group[-1].index, "send"),
                f"steps {_names(group)} send {len(group)} {_what(key)} at most "
                f"{format_duration(_span(group[0], group[-1]))} apart: the policy caps {key} at "
                f"{cap}, so the last is capped unless they fall in different calendar "
                f"{cap.calendar}s",
                severity="warning",
            )


def _groups(sends: list[_Send], size: int) -> Iterator[list[_Send]]:
    for start in range(len(sends) - size + 1):
        yield sends[start : start + size]


def _never_met(check: JourneyCheck, key: str, cap: Cap, group: list[_Send]) -> Problem:
    span = format_duration(_span(group[0], group[-1]))
    return check.problem(
        ("steps", group[-1].index, "send"),
        f"cap that the journey can never meet: steps {_names(group)} send {len(group)} "
        f"{_what(key)} at most {span} apart, but the policy caps {key} at {cap}",
    )


def _what(key: str) -> str:
    return "touches" if key == "global" else key


def _names(group: list[_Send]) -> str:
    names = [repr(s.step.id) for s in group]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
