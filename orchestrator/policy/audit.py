"""An audit of a run, independent of the engine: caps, quiet hours and consent, recomputed.

``audit`` reads the rows of ``recall export touches``, the users and the opt-outs,
and reports every send that broke the policy. It shares none of the engine's decision path
(no Redis, no ``CapStore``/Lua, no ``next_send_time``/``HolidayWindows``, no
``suppressions``): windows are counted over sorted send times, send hours are read from
``Policy.send_window`` and opt-outs are matched here, so an engine bug shows up as a
violation. It reuses only value types and settings (``CapRule``, ``PLATFORM_LIMITS``, the
``Policy`` model) and ``windows.resolve_local`` (a wall time to an instant, DST-exact).

What counts as a send (it may have reached the person, and the engine holds its cap slot):
status ``sent``, ``delivered``, ``sending`` and ``unknown``, and ``failed`` with reason
``unknown_outcome`` (never confirmed, so perhaps delivered; only a definite
rejection releases a reservation). Any other ``failed`` was definitely not delivered and
released its slot; ``scheduled``, ``claimed``, ``suppressed`` and ``cancelled`` never left.
A row with a true ``test`` key (``audit_store`` adds it for ``touches.test``) is a test send:
uncapped and never counted.

A send's time is its ``sent_at``. Rows that never got one (``sending``, ``unknown``,
``unknown_outcome``) use ``due_at``, the latest moment the export knows the touch was still
due: they count in caps and consent at that time, and quiet hours are not judged for them.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import groupby
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.errors import InputError
from orchestrator.journeys.durations import format_duration
from orchestrator.policy.rules import PLATFORM_LIMITS, CapRule
from orchestrator.policy.windows import resolve_local
from orchestrator.reports.export import rows as export_rows
from orchestrator.store.tables import OPT_OUTS as _OPT_OUTS
from orchestrator.store.tables import TOUCHES as _TOUCHES
from orchestrator.store.tables import USERS as _USERS

if TYPE_CHECKING:  # the policy package does not import the journey models at run time
    from orchestrator.journeys.model import Policy

ViolationKind = Literal["cap", "quiet_hours", "consent"]
KINDS: tuple[ViolationKind, ...] = ("cap", "quiet_hours", "consent")
SEND_STATUSES = frozenset({"sent", "delivered", "sending", "unknown"})
UNKNOWN_OUTCOME = "unknown_outcome"
ALL_CHANNELS = "all"
UNFOLLOW = "unfollow"  # the opt_outs.reason a WeChat unfollow event records



# ---------------------------------------------------------------- values


class TouchRef(NamedTuple):
    """Which touch: its idempotency key ``(enrollment, step)`` and its journey."""

    journey_id: str
    step_id: str
    enrollment_id: int


@dataclass(frozen=True, slots=True)
class Violation:
    """One send that broke the policy; ``detail`` says which rule, when and why."""

    kind: ViolationKind
    user_id: str
    touch: TouchRef
    detail: str


@dataclass(frozen=True, slots=True)
class UserFacts:
    """What the audit needs of a ``users`` row. The flags carry no time (see ``audit``)."""

    user_id: str
    timezone: str | None = None
    sms_opt_out: bool = False
    wechat_followed: bool | None = None
    phone: str | None = None
    openid: str | None = None
    unionid: str | None = None
    external_userid: str | None = None

    def identity_keys(self) -> set[str]:
        """Every ``opt_outs.identity`` that names this user, in ``identity_key`` form."""
        keys = {identity_key(f"user:{self.user_id}")}
        for kind in ("phone", "openid", "unionid", "external_userid"):
            value = getattr(self, kind)
            if value:
                keys.add(identity_key(f"{kind}:{value}"))
        return keys


@dataclass(frozen=True, slots=True)
class OptOutFact:
    """An ``opt_outs`` row: consent for ``channel`` (or ``all``) withdrawn at ``created_at``
    (``None``: unknown, taken as before the run)."""

    channel: str
    identity: str
    created_at: datetime | None
    user_id: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Send:
    """A row that counts as a send, parsed. ``exact``: ``at`` is the ``sent_at``."""

    touch: TouchRef
    user_id: str
    channel: str
    status: str
    at: datetime
    exact: bool


@dataclass
class AuditReport:
    """The outcome of an audit: how many touches were read, how many were sends, what broke."""

    touches: int = 0
    sends: int = 0
    violations: list[Violation] = field(default_factory=list)

    def by_kind(self) -> dict[ViolationKind, int]:
        counts = dict.fromkeys(KINDS, 0)
        for violation in self.violations:
            counts[violation.kind] += 1
        return counts


# ---------------------------------------------------------------- rows → sends


def counts_as_send(row: Mapping[str, Any]) -> bool:
    """Did this touch (an export row) reach, or possibly reach, a provider, holding a cap slot?"""
    if row.get("test"):
        return False
    status = row.get("status")
    return status in SEND_STATUSES or (status == "failed" and row.get("reason") == UNKNOWN_OUTCOME)


def parse_time(value: Any, *, column: str, row: int) -> datetime | None:
    """An export time (ISO 8601, ``Z`` or an offset; no offset reads as UTC) as aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise InputError(
                f"touch row {row}: {column} {value!r} is not an ISO 8601 time; export rows "
                "carry times such as 2026-03-01T08:00:00Z (recall export touches)"
            ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _send_of(row: Mapping[str, Any], index: int) -> Send:
    try:
        touch = TouchRef(str(row["journey_id"]), str(row["step_id"]), int(row["enrollment_id"]))
        user_id, channel, status = str(row["user_id"]), str(row["channel"]), str(row["status"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"touch row {index}: missing or bad column ({exc}); give the rows of "
            "recall export touches (journey_id, enrollment_id, user_id, step_id, channel, "
            "status, due_at, sent_at, ...)"
        ) from None
    sent_at = parse_time(row.get("sent_at"), column="sent_at", row=index)
    at = sent_at or parse_time(row.get("due_at"), column="due_at", row=index)
    if at is None:
        raise InputError(f"touch row {index}: a {status} touch with neither sent_at nor due_at")
    return Send(touch, user_id, channel, status, at, exact=sent_at is not None)


def sends_of(rows: Iterable[Mapping[str, Any]], report: AuditReport | None = None) -> list[Send]:
    """The rows that count as sends (``counts_as_send``), parsed; tallies into ``report``."""
    sends = []
    for index, row in enumerate(rows, start=1):
        if report is not None:
            report.touches += 1
        if counts_as_send(row):
            sends.append(_send_of(row, index))
    if report is not None:
        report.sends += len(sends)
    return sends


# ---------------------------------------------------------------- the audit


def audit(
    rows: Iterable[Mapping[str, Any]],
    *,
    users: Mapping[str, UserFacts],
    opt_outs: Sequence[OptOutFact],
    policy: Policy,
    journey_policies: Mapping[str, Policy] | None = None,
) -> list[Violation]:
    """Every cap, quiet-hour and consent violation among the sends of ``rows``, by time.

    ``rows`` are export-touch dicts; ``users`` by user id; ``journey_policies`` the
    policy each journey ran under (``policy.tightened_by(journey.policy)``), else ``policy``.

    - **caps**, per ``user_id`` across journeys: each policy cap (``global`` counts every
      channel) and the platform quotas (``PLATFORM_LIMITS``, Asia/Shanghai calendar). Rolling
      ``R``: no ``(t - R, t]`` holds more than ``max`` sends. Calendar (day, week from Monday,
      month in the policy timezone or the quota's): no period does. A journey's stricter cap
      is judged where that journey sent, counting everyone's earlier sends.
    - **quiet hours**: a send on a channel with send hours lies inside its window in the
      user's timezone (``users.timezone``, else the policy's), rest-day hours on rest days
      (``Policy.send_window``); a window crossing midnight belongs to the day it starts.
    - **consent**: no send on a channel after an opt-out for it (or ``all``) was recorded
      (``created_at <= sent``), matched by user id or identity; no SMS to
      ``users.sms_opt_out``, no article to ``wechat_followed == false``.
    """
    return _audit_sends(sends_of(rows), users, opt_outs, policy, journey_policies)


def audit_report(
    rows: Iterable[Mapping[str, Any]],
    *,
    users: Mapping[str, UserFacts],
    opt_outs: Sequence[OptOutFact],
    policy: Policy,
    journey_policies: Mapping[str, Policy] | None = None,
) -> AuditReport:
    """``audit`` with the counts of touches read and sends checked."""
    report = AuditReport()
    sends = sends_of(rows, report)
    report.violations = _audit_sends(sends, users, opt_outs, policy, journey_policies)
    return report


def _audit_sends(
    sends: Sequence[Send],
    users: Mapping[str, UserFacts],
    opt_outs: Sequence[OptOutFact],
    policy: Policy,
    journey_policies: Mapping[str, Policy] | None,
) -> list[Violation]:
    policies = _Policies(policy, journey_policies or {})
    consent = _Consent(users, opt_outs)
    found: list[tuple[datetime, Violation]] = []
    by_user: dict[str, list[Send]] = defaultdict(list)
    for send in sends:
        by_user[send.user_id].append(send)
    for user_id, user_sends in by_user.items():
        user = users.get(user_id)
        found += _cap_violations(user_sends, policies)
        found += _quiet_violations(user_sends, user, policies)
        found += consent.violations(user_sends, user)
    found.sort(key=lambda item: (item[0], KINDS.index(item[1].kind), item[1].user_id,
                                 item[1].detail))
    return [violation for _, violation in found]


def _violation(kind: ViolationKind, send: Send, detail: str) -> tuple[datetime, Violation]:
    return send.at, Violation(kind, send.user_id, send.touch, detail)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- policies and rules


class _Policies:
    """The policy of each journey, and its cap rules (computed once per policy)."""

    def __init__(self, base: Policy, by_journey: Mapping[str, Policy]) -> None:
        self.base = base
        self.by_journey = by_journey
        self._rules: dict[int, frozenset[CapRule]] = {}

    def of(self, journey_id: str) -> Policy:
        return self.by_journey.get(journey_id, self.base)

    def rules(self, journey_id: str) -> frozenset[CapRule]:
        policy = self.of(journey_id)
        key = id(policy)
        if key not in self._rules:
            self._rules[key] = frozenset(cap_rules_of(policy))
        return self._rules[key]


def cap_rules_of(policy: Policy) -> list[CapRule]:
    """Every cap ``policy`` imposes: its own caps (calendar ones in its timezone) and the
    platform quotas, unless a policy cap is already the very same or a stricter window."""
    rules = [
        CapRule.per(name, None if name == "global" else name, cap.max, cap.per, tz=policy.timezone)
        for name, cap in sorted(policy.caps.items())
    ]
    for limit in PLATFORM_LIMITS.values():
        if not any(_same_window_within(rule, limit) for rule in rules):
            rules.append(limit)
    return rules


def _same_window_within(rule: CapRule, limit: CapRule) -> bool:
    return (
        rule.channel == limit.channel
        and rule.calendar == limit.calendar
        and rule.tz == limit.tz
        and rule.max <= limit.max
    )


# ---------------------------------------------------------------- caps


def _cap_violations(sends: Sequence[Send], policies: _Policies) -> list[tuple[datetime, Violation]]:
    """Each rule of the user's journeys over the user's sends on the channels it counts."""
    found = []
    journeys = sorted({s.touch.journey_id for s in sends})
    rules = sorted({rule for j in journeys for rule in policies.rules(j)}, key=_rule_order)
    for rule in rules:
        counted = sorted((s for s in sends if rule.applies_to(s.channel)), key=lambda s: s.at)
        governed = {id(s) for s in counted if rule in policies.rules(s.touch.journey_id)}
        found += _rule_violations(rule, counted, governed)
    return found


def _rule_order(rule: CapRule) -> tuple[str, str, int, int, str]:
    return (rule.name, rule.tz or "", rule.max, rule.rolling_s or 0, rule.calendar or "")


def _rule_violations(
    rule: CapRule, counted: Sequence[Send], governed: set[int]
) -> list[tuple[datetime, Violation]]:
    """Windows ending at each send the rule governs: a send over ``max`` is a violation.

    Sends at the same instant have no known order: only the governed ones among them are
    counted with the one judged (a looser journey's send may have been reserved after it).
    """
    times = [s.at for s in counted]
    window_start = _window_start(rule, times)
    found = []
    for at, group in groupby(counted, key=lambda s: s.at):
        judged = [s for s in group if id(s) in governed]
        if not judged:
            continue
        earlier = bisect_left(times, at)
        count = earlier - window_start(at, earlier) + len(judged)
        if count > rule.max:
            found.append(_violation("cap", judged[-1], _cap_detail(rule, count, at)))
    return found


def _window_start(rule: CapRule, times: Sequence[datetime]) -> Callable[[datetime, int], int]:
    """For a send at ``at`` (``earlier`` sends before it), the index of the first counted."""
    if rule.rolling_s is not None:
        length = timedelta(seconds=rule.rolling_s)
        return lambda at, earlier: bisect_right(times, at - length, 0, earlier)
    periods = [_period(rule, t) for t in times]
    first: dict[Hashable, int] = {}
    for index, period in enumerate(periods):
        first.setdefault(period, index)
    return lambda at, earlier: first[_period(rule, at)]


def _zone(rule: CapRule) -> ZoneInfo:
    assert rule.tz is not None  # cap_rules_of pins every calendar rule to a zone
    return ZoneInfo(rule.tz)


def _period(rule: CapRule, at: datetime) -> date:
    """The first local day of the calendar period (day, week from Monday, month) of ``at``."""
    day = at.astimezone(_zone(rule)).date()
    if rule.calendar == "week":
        return day - timedelta(days=day.weekday())
    if rule.calendar == "month":
        return day.replace(day=1)
    return day


def _cap_detail(rule: CapRule, count: int, at: datetime) -> str:
    channel = rule.channel or "any-channel"
    if rule.rolling_s is not None:
        span = format_duration(timedelta(seconds=rule.rolling_s))
        where = f"in the {span} up to {_iso(at)}"
        limit = f"{rule.max} per {span}"
    else:
        start = _period(rule, at)
        label = {"day": f"{start}", "week": f"the week of {start}", "month": f"{start:%Y-%m}"}
        where = f"in {rule.calendar} {label[rule.calendar]} ({rule.tz})"  # type: ignore[index]
        limit = f"{rule.max} per {rule.calendar}"
    return f"cap {rule.name} ({limit}): {count} {channel} sends {where}"


# ---------------------------------------------------------------- quiet hours


def _quiet_violations(
    sends: Sequence[Send], user: UserFacts | None, policies: _Policies
) -> list[tuple[datetime, Violation]]:
    found = []
    for send in sends:
        policy = policies.of(send.touch.journey_id)
        if not send.exact or not _has_send_hours(policy, send.channel):
            continue
        tz = _user_zone(user, policy)
        if not _inside_send_hours(policy, send.channel, send.at, tz):
            found.append(_violation("quiet_hours", send, _quiet_detail(policy, send, tz)))
    return found


def _has_send_hours(policy: Policy, channel: str) -> bool:
    return channel in policy.send_hours or (
        policy.holidays is not None and channel in policy.holiday_send_hours
    )


def _user_zone(user: UserFacts | None, policy: Policy) -> ZoneInfo:
    """The user's zone when it names a real one, else the policy's (as for users without)."""
    if user is not None and user.timezone:
        try:
            return ZoneInfo(user.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return policy.zone


def _inside_send_hours(policy: Policy, channel: str, at: datetime, tz: ZoneInfo) -> bool:
    """Inside today's window, or inside yesterday's if that one crosses midnight."""
    today = at.astimezone(tz).date()
    for day in (today - timedelta(days=1), today):
        window = policy.send_window(channel, day)
        if window is None:
            if day == today:
                return True  # no send hours that day: any time
            continue
        start = resolve_local(datetime.combine(day, window.start), tz)
        end_day = day if window.start < window.end else day + timedelta(days=1)
        end = resolve_local(datetime.combine(end_day, window.end), tz)
        if start <= at < end:
            return True
    return False


def _quiet_detail(policy: Policy, send: Send, tz: ZoneInfo) -> str:
    local = send.at.astimezone(tz)
    window = policy.send_window(send.channel, local.date())
    rest_day = policy.is_rest_day(local.date()) and send.channel in policy.holiday_send_hours
    rest = " (rest-day hours)" if rest_day else ""
    allowed = f"send hours {window}{rest}" if window else "the previous day's send hours"
    return (
        f"{send.channel} sent {_iso(send.at)}, {local:%H:%M %a %Y-%m-%d} in {tz.key}: "
        f"outside {allowed}"
    )


# ---------------------------------------------------------------- consent


_NON_DIGITS = re.compile(r"\D")


def phone_key(raw: str) -> str:
    """A phone number reduced to compare spellings: digits only, ``00``/``+`` and China's
    ``86`` before an 11-digit mobile dropped (``+86 138-0013-8000`` → ``13800138000``)."""
    digits = _NON_DIGITS.sub("", raw)
    if digits.startswith("00"):
        digits = digits[2:]
    if len(digits) == 13 and digits.startswith("861"):
        digits = digits[2:]
    return digits


def identity_key(identity: str) -> str:
    """An ``opt_outs.identity`` (``phone:+86…``, ``openid:…``, ``user:…``) in comparable form."""
    kind, _, value = identity.partition(":")
    return f"{kind}:{phone_key(value) if kind == 'phone' else value}"


class _Consent:
    """Opt-outs indexed by user id and by identity, and the users' untimed flags."""

    def __init__(self, users: Mapping[str, UserFacts], opt_outs: Sequence[OptOutFact]) -> None:
        self.users = users
        self.by_user: dict[str, list[OptOutFact]] = defaultdict(list)
        self.by_identity: dict[str, list[OptOutFact]] = defaultdict(list)
        for opt_out in opt_outs:
            if opt_out.user_id:
                self.by_user[opt_out.user_id].append(opt_out)
            self.by_identity[identity_key(opt_out.identity)].append(opt_out)

    def of(self, user_id: str, user: UserFacts | None) -> list[OptOutFact]:
        """The user's opt-outs, by user id or by any of the user's identities."""
        keys = user.identity_keys() if user else {identity_key(f"user:{user_id}")}
        found = {id(o): o for o in self.by_user.get(user_id, [])}
        for key in keys:
            found.update((id(o), o) for o in self.by_identity.get(key, []))
        return sorted(found.values(), key=_recorded)

    def violations(
        self, sends: Sequence[Send], user: UserFacts | None
    ) -> list[tuple[datetime, Violation]]:
        opt_outs = self.of(sends[0].user_id, user)
        found = []
        for send in sends:
            detail = _withdrawn(send, opt_outs) or _flagged(send, user, opt_outs)
            if detail:
                found.append(_violation("consent", send, detail))
        return found


def _recorded(opt_out: OptOutFact) -> datetime:
    return opt_out.created_at or datetime.min.replace(tzinfo=UTC)


def _withdrawn(send: Send, opt_outs: Sequence[OptOutFact]) -> str | None:
    """The first opt-out for the send's channel (or ``all``) recorded at or before it."""
    for opt_out in opt_outs:
        if opt_out.channel in (send.channel, ALL_CHANNELS) and _recorded(opt_out) <= send.at:
            when = _iso(opt_out.created_at) if opt_out.created_at else "at an unknown time"
            return (
                f"{send.channel} sent {_iso(send.at)} after an opt-out for {opt_out.channel} "
                f"recorded {when} ({opt_out.identity}, {opt_out.reason or 'no reason'})"
            )
    return None


def _flagged(send: Send, user: UserFacts | None, opt_outs: Sequence[OptOutFact]) -> str | None:
    """The users-table flags carry no time: they hold for the whole run. Except that a WeChat
    unfollow during the run sets ``wechat_followed = false`` *and* records an ``unfollow``
    row at that moment: with such a row the flag is dated by it (``_withdrawn`` judges)."""
    if user is None:
        return None
    if send.channel == "sms" and user.sms_opt_out:
        return f"sms sent {_iso(send.at)} to a user with users.sms_opt_out (held for the run)"
    if send.channel == "wechat_article" and user.wechat_followed is False:
        if any(o.channel == send.channel and o.reason == UNFOLLOW for o in opt_outs):
            return None
        return (
            f"wechat_article sent {_iso(send.at)} to a user with users.wechat_followed = false "
            "(held for the run)"
        )
    return None


# ---------------------------------------------------------------- the store


def audit_store(
    engine: Engine, *, policy: Policy, journey_policies: Mapping[str, Policy] | None = None
) -> list[Violation]:
    """``audit`` over the store: the export rows, the users who got sends, every opt-out."""
    return audit_store_report(engine, policy=policy, journey_policies=journey_policies).violations


def audit_store_report(
    engine: Engine, *, policy: Policy, journey_policies: Mapping[str, Policy] | None = None
) -> AuditReport:
    """``audit_store`` with the counts (for ``recall audit``). Four streamed queries: the
    export rows, the keys of test touches, the users, the opt-outs."""
    tests = _test_touch_keys(engine)
    report = AuditReport()
    rows = (
        {**row, "test": True} if (row["enrollment_id"], row["step_id"]) in tests else row
        for row in export_rows(engine, "touches")
    )
    sends = sends_of(rows, report)
    users = load_users(engine, {s.user_id for s in sends})
    report.violations = _audit_sends(sends, users, load_opt_outs(engine), policy,
                                     journey_policies)
    return report


def _test_touch_keys(engine: Engine) -> set[tuple[int, str]]:
    t = _TOUCHES.c
    query = sa.select(t.enrollment_id, t.step_id).where(t.test.is_(True))
    with engine.connect() as conn:
        return {(row.enrollment_id, row.step_id) for row in conn.execute(query)}


def load_users(engine: Engine, user_ids: set[str] | None = None) -> dict[str, UserFacts]:
    """The ``users`` rows (only ``user_ids`` when given) as ``UserFacts``, in one query."""
    u = _USERS.c
    names = ("user_id", "timezone", "sms_opt_out", "wechat_followed", "phone", "openid",
             "unionid", "external_userid")
    found = {}
    with engine.connect() as conn:
        # yield_per on the statement, not the connection (whose later statements it would
        # also stream)
        query = sa.select(*(u[n] for n in names)).execution_options(yield_per=10_000)
        for row in conn.execute(query):
            if user_ids is None or row.user_id in user_ids:
                found[row.user_id] = UserFacts(**{n: getattr(row, n) for n in names})
    return found


def load_opt_outs(engine: Engine) -> list[OptOutFact]:
    """Every ``opt_outs`` row as an ``OptOutFact``."""
    o = _OPT_OUTS.c
    query = sa.select(o.channel, o.identity, o.created_at, o.user_id, o.reason)
    with engine.connect() as conn:
        return [OptOutFact(r.channel, r.identity, r.created_at, r.user_id, r.reason)
                for r in conn.execute(query)]


def iter_violation_lines(violations: Iterable[Violation]) -> Iterator[str]:
    """One line per violation: ``kind user journey/step #enrollment: detail``."""
    for v in violations:
        yield (f"{v.kind} {v.user_id} {v.touch.journey_id}/{v.touch.step_id} "
               f"#{v.touch.enrollment_id}: {v.detail}")


__all__ = [
    "KINDS",
    "SEND_STATUSES",
    "AuditReport",
    "OptOutFact",
    "Send",
    "TouchRef",
    "UserFacts",
    "Violation",
    "ViolationKind",
    "audit",
    "audit_report",
    "audit_store",
    "audit_store_report",
    "cap_rules_of",
    "counts_as_send",
    "identity_key",
    "iter_violation_lines",
    "load_opt_outs",
    "load_users",
    "parse_time",
    "phone_key",
    "sends_of",
]
