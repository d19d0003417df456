"""What a chaos run counts, from the provider's own record joined with the users and the
store's exports. Pure: plain values in, findings out, no I/O.

The counts (each one a list of findings, so a failing run says *which* person and step):

- **duplicates**: the provider accepted one touch for one person more than once (one
  person, one step, two or more accepted sends). Each extra send is one duplicate.
- **lost**: a treatment enrollment's touch that never reached its person by the provider's
  record, and that the store does not account for as ``suppressed``, ``cancelled`` or
  ``failed`` on a definite provider rejection. ``failed/unknown_outcome`` and
  ``failed/retries_exhausted:*`` are lost (a rate limit or a timeout is not a rejection);
  so is a ``failed`` touch whose rejection the provider's record does not show, a touch
  still waiting when the run ended, and a step the enrollment never reached.
- **cap_violations**: a person the provider sent more than a cap allows, counted over the
  provider's send times (each send beyond the cap is one violation).
- **mismatches**: the store and the provider disagree: the store says sent and the provider
  has no send; the provider sent and the store has no touch, or one that is not ``sent`` or
  ``delivered``; the store's provider id is not the one the provider gave; the provider
  sent to someone the run never meant to touch (a holdout, a stranger).
- **unexpected_suppressions**: touches the store suppressed although the run's population
  and policy leave no legitimate reason to (no opt-outs, no quiet hours, exactly the
  caps' worth of touches): a leaked cap reservation shows up here.

A *capped* step (``Expectation.capped``) is one the caps must always refuse: it goes to
people who already had every touch a cap allows. Its touch must end ``suppressed`` by a cap
(or ``cancelled``). One the provider sent counts against the caps over the provider's send
times (not as a second send of the journey's step); one it did not send but the store did
not refuse either (sent, failed, waiting) is a cap violation of its own.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from orchestrator.policy.rules import CapRule

SENT = frozenset({"sent", "delivered"})
# Failure reasons that are no provider rejection: the person may simply never have got it.
INDEFINITE_PREFIXES = ("unknown", "retries_exhausted", "worker_lost", "timeout")
COUNTS = ("duplicates", "lost", "cap_violations", "mismatches", "unexpected_suppressions")


@dataclass(frozen=True, slots=True)
class Person:
    """A user of the run and the addresses the providers know them by."""

    user_id: str
    openid: str
    external_userid: str
    phone: str


@dataclass(frozen=True, slots=True)
class ProviderSend:
    """One recipient of one call the provider accepted (its record's ``accepted``)."""

    channel: str
    recipient: str
    seq: int
    at: datetime
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderRefusal:
    """The provider definitely refused one recipient (a recipient error, or excluded)."""

    channel: str
    recipient: str
    seq: int
    why: str


@dataclass(frozen=True, slots=True)
class StoreTouch:
    """A row of ``recall export touches``."""

    enrollment_id: int
    user_id: str
    arm: str
    step_id: str
    channel: str
    status: str
    reason: str | None = None
    provider_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoreEnrollment:
    """A row of ``recall export enrollments``."""

    enrollment_id: int
    user_id: str
    arm: str


@dataclass(frozen=True, slots=True)
class Finding:
    """One bad outcome: whose, which step, and what the evidence says."""

    count: str
    user_id: str | None
    step_id: str | None
    detail: str
    n: int = 1  # how many it counts for (a triple send is two duplicates)


@dataclass
class Tally:
    findings: list[Finding] = field(default_factory=list)

    def add(self, count: str, user_id: str | None, step_id: str | None, detail: str,
            n: int = 1) -> None:
        self.findings.append(Finding(count, user_id, step_id, detail, n))

    def total(self, count: str) -> int:
        return sum(f.n for f in self.findings if f.count == count)

    def totals(self) -> dict[str, int]:
        return {count: self.total(count) for count in COUNTS}

    def of(self, count: str) -> list[Finding]:
        return [f for f in self.findings if f.count == count]

    def breakdown(self, count: str) -> dict[str, int]:
        """Findings of one count by their detail's leading words (before any ``:`` or ``;``)."""
        kinds: Counter[str] = Counter()
        for f in self.of(count):
            kinds[f.detail.split(";")[0].split(" (")[0]] += f.n
        return dict(kinds.most_common())


@dataclass(frozen=True)
class Expectation:
    """What the run meant to happen: each treatment enrollment gets every step, once."""

    steps: Mapping[str, str]  # step id -> channel, one step per channel
    caps: Sequence[CapRule]
    timezone: ZoneInfo
    suppressions_expected: bool = False
    capped: frozenset[str] = frozenset()  # step ids the caps must refuse, whoever gets them

    def step_of(self, channel: str) -> str | None:
        return next((s for s, c in self.steps.items() if c == channel), None)


def tally(
    people: Iterable[Person],
    enrollments: Iterable[StoreEnrollment],
    touches: Iterable[StoreTouch],
    sends: Iterable[ProviderSend],
    refusals: Iterable[ProviderRefusal],
    expect: Expectation,
) -> Tally:
    """Every count of a run (see the module docstring)."""
    result = Tally()
    owner = _owners(people)
    got: dict[tuple[str, str], list[ProviderSend]] = defaultdict(list)
    for send in sends:
        user = owner.get((send.channel, send.recipient))
        step = expect.step_of(send.channel)
        if user is None or step is None:
            result.add("mismatches", user, step, f"provider sent to an unknown recipient "
                       f"({send.channel} {send.recipient}, record #{send.seq})")
            continue
        got[(user, step)].append(send)
    _capped_steps(result, got, touches, expect)
    refused = {(owner.get((r.channel, r.recipient)), expect.step_of(r.channel)) for r in refusals}
    by_key = {(t.enrollment_id, t.step_id): t for t in touches}
    expected: set[tuple[str, str]] = set()
    for enrollment in enrollments:
        if enrollment.arm != "treatment":
            continue
        for step in expect.steps:
            expected.add((enrollment.user_id, step))
            touch = by_key.get((enrollment.enrollment_id, step))
            _judge(result, enrollment.user_id, step, touch,
                   got.get((enrollment.user_id, step), []), (enrollment.user_id, step) in refused)
    for (user, step), received in sorted(got.items()):
        if (user, step) not in expected and step not in expect.capped:
            result.add("mismatches", user, step, f"provider sent to someone not in the "
                       f"treatment arm; records {_seqs(received)}", n=len(received))
    if not expect.suppressions_expected:
        for t in touches:
            if t.status == "suppressed" and t.step_id not in expect.capped:
                result.add("unexpected_suppressions", t.user_id, t.step_id,
                           f"suppressed: {t.reason}")
    _cap_violations(result, got, expect)
    return result


def _capped_steps(result: Tally, got: dict[tuple[str, str], list[ProviderSend]],
                  touches: Iterable[StoreTouch], expect: Expectation) -> None:
    """Each touch of a capped step the caps did not refuse is a violation. Its provider send
    (found by the provider id the store holds) is filed under the capped step, so that it
    counts against the caps and not as a second send of the journey's step."""
    for t in touches:
        if t.step_id not in expect.capped:
            continue
        if t.status == "cancelled" or (
                t.status == "suppressed" and (t.reason or "").startswith("capped:")):
            continue
        step = expect.step_of(t.channel)
        sends = got.get((t.user_id, step), []) if step else []
        mine = [s for s in sends if t.provider_message_id and s.ref == t.provider_message_id]
        if mine and step:  # counted over the provider's send times, with the others
            got[(t.user_id, step)] = [s for s in sends if s not in mine]
            got[(t.user_id, t.step_id)] += mine
        else:
            result.add("cap_violations", t.user_id, t.step_id,
                       f"{t.status}/{t.reason or '-'}: the caps should have refused it")


def _owners(people: Iterable[Person]) -> dict[tuple[str, str], str]:
    owner: dict[tuple[str, str], str] = {}
    for p in people:
        owner[("wechat_article", p.openid)] = p.user_id
        owner[("wecom_group_invite", p.external_userid)] = p.user_id
        owner[("sms", p.phone)] = p.user_id
    return owner


def _judge(result: Tally, user: str, step: str, touch: StoreTouch | None,
           received: Sequence[ProviderSend], refused: bool) -> None:
    """One expected (person, step): duplicate, lost, mismatched, or fine."""
    if len(received) > 1:
        result.add("duplicates", user, step, f"{len(received)} provider sends; records "
                   f"{_seqs(received)}", n=len(received) - 1)
    state = "no touch" if touch is None else f"{touch.status}/{touch.reason or '-'}"
    if not received:
        if not _accounted(touch, refused):
            result.add("lost", user, step, f"{state}; the provider has no send")
        if touch is not None and touch.status in SENT:
            result.add("mismatches", user, step, f"store says {state}; the provider has no send")
        return
    if touch is None or touch.status not in SENT:
        result.add("mismatches", user, step, f"provider sent, store says {state}; records "
                   f"{_seqs(received)}")
    elif touch.provider_message_id not in {s.ref for s in received}:
        result.add("mismatches", user, step, f"store's provider id {touch.provider_message_id} "
                   f"is not the provider's ({', '.join(str(s.ref) for s in received)})")


def _accounted(touch: StoreTouch | None, refused: bool) -> bool:
    """Not sent, and rightly so: suppressed, cancelled, or failed on a definite rejection
    that the provider's record shows."""
    if touch is None:
        return False
    if touch.status in ("suppressed", "cancelled"):
        return True
    if touch.status != "failed":
        return False
    indefinite = (touch.reason or "").startswith(INDEFINITE_PREFIXES)
    return refused and not indefinite


def _seqs(sends: Sequence[ProviderSend]) -> str:
    return ", ".join(f"#{s.seq}" for s in sends)


def _cap_violations(result: Tally, got: Mapping[tuple[str, str], Sequence[ProviderSend]],
                    expect: Expectation) -> None:
    """Each person's provider sends, against every cap of the policy."""
    by_person: dict[str, list[ProviderSend]] = defaultdict(list)
    for (user, _step), received in got.items():
        by_person[user] += received
    for user, received in sorted(by_person.items()):
        for rule in expect.caps:
            times = sorted(s.at for s in received if rule.applies_to(s.channel))
            excess = _excess(rule, times, expect.timezone)
            if excess:
                result.add("cap_violations", user, None, f"cap {rule.name} ({rule.max} per "
                           f"{_per(rule)}): {len(times)} sends", n=excess)


def _excess(rule: CapRule, times: Sequence[datetime], tz: ZoneInfo) -> int:
    """Sends beyond the cap: the most any one window holds, minus ``max``."""
    if len(times) <= rule.max:
        return 0
    if rule.rolling_s is not None:
        span = timedelta(seconds=rule.rolling_s)
        most, low = 0, 0
        for high, at in enumerate(times):  # window (at - span, at]
            while times[low] <= at - span:
                low += 1
            most = max(most, high - low + 1)
    else:
        zone = ZoneInfo(rule.tz) if rule.tz else tz
        most = max(Counter(_period(at.astimezone(zone), rule.calendar or "day")
                           for at in times).values())
    return max(0, most - rule.max)


def _period(local: datetime, unit: str) -> tuple[int, ...]:
    if unit == "month":
        return (local.year, local.month)
    if unit == "week":
        iso = local.isocalendar()
        return (iso.year, iso.week)
    return (local.year, local.month, local.day)


def _per(rule: CapRule) -> str:
    return rule.calendar or f"{rule.rolling_s}s"
