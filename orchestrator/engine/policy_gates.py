"""The gates of the send pipeline that apply the policy (reach, consent, quiet hours, caps)
and render the message. Order and meaning are documented in ``pipeline``."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update

from orchestrator.clock import as_utc
from orchestrator.engine.pipeline import Gate, Work, inactive_gate, rung_holdout_gate
from orchestrator.engine.runtime import Runtime
from orchestrator.errors import RecallError, RetryLater
from orchestrator.journeys.model import Policy
from orchestrator.journeys.render import render_link, render_touch, template_context
from orchestrator.policy.caps import (
    CapDecision,
    CapRequest,
    CapsNeedRebuild,
    CapsUnsafe,
    touch_key,
)
from orchestrator.policy.consent import suppressions_of
from orchestrator.policy.quiet import HolidayCalendar, HolidayWindows, next_send_time
from orchestrator.policy.rebuild import rebuild_from_store
from orchestrator.policy.rules import CapRule
from orchestrator.store.db import begin_write
from orchestrator.store.tables import TOUCHES
from orchestrator.store.types import among
from orchestrator.tracking.links import new_code, short_url

log = logging.getLogger(__name__)


def gates_for(rt: Runtime) -> list[Gate]:
    return [
        inactive_gate,
        rung_holdout_gate,
        lambda works, now: consent_gate(rt, works, now),
        quiet_gate,
        lambda works, now: caps_gate(rt, works, now),
        lambda works, now: render_gate(rt, works, now),
    ]


# --- consent and reach, with channel fallback ------------------------------------------

def consent_gate(rt: Runtime, works: Sequence[Work], now: datetime) -> None:
    """Opt-outs, unfollows and missing addresses, checked in bulk right before the send;
    a step's ``fallback`` channel is tried (under its own consent) before suppressing."""
    pending = list(works)
    while pending:
        by_channel: dict[str, list[Work]] = defaultdict(list)
        for w in pending:
            by_channel[w.channel].append(w)
        pending = []
        for channel, group in by_channel.items():
            # The users were loaded with the touches: only their opt-outs are read here.
            blocked = suppressions_of(rt.db, [w.user["user_id"] for w in group],
                                      [w.user for w in group if w.known_user], channel)
            for w in group:
                reason = blocked.get(w.user["user_id"])
                if reason is None:
                    continue
                w.tried.append(w.channel)
                fallback = w.step.fallback
                if fallback and fallback not in w.tried:
                    w.channel = fallback
                    pending.append(w)
                else:
                    w.decide("suppressed", reason)


# --- quiet hours -----------------------------------------------------------------------

def quiet_gate(works: Sequence[Work], now: datetime) -> None:
    """Outside the channel's local send hours (holiday hours on rest days): deferred to the
    next allowed minute, never dropped. A test send is not deferred: someone is waiting
    for it."""
    for w in works:
        if w.touch.get("test"):
            continue
        window = w.policy.send_hours.get(w.channel)
        special = _holiday_hours(w.policy, w.channel)
        if window is None and special is None:
            continue
        hours = (window.start, window.end) if window else None
        allowed = next_send_time(now, w.tz, hours, holidays_windows=special)
        if allowed > now:
            w.decide("deferred", f"quiet_hours:{w.channel}", allowed)


def _holiday_hours(policy: Policy, channel: str) -> HolidayWindows | None:
    window = policy.holiday_send_hours.get(channel)
    if policy.holidays is None or window is None:
        return None
    hours = (window.start, window.end)
    return HolidayWindows(_calendar(policy.holidays), holiday=hours, weekend=hours)


@lru_cache(maxsize=8)
def _calendar(country: str) -> HolidayCalendar:
    return HolidayCalendar(country)


# --- frequency caps --------------------------------------------------------------------

def cap_rules(policy: Policy) -> tuple[CapRule, ...]:
    """The policy's caps as rules (``global`` counts every channel); the platform quotas
    are added per channel by the cap store."""
    return tuple(
        CapRule.per(name, None if name == "global" else name, cap.max, cap.per)
        for name, cap in sorted(policy.caps.items())
    )


def caps_gate(rt: Runtime, works: Sequence[Work], now: datetime) -> None:
    """Check and reserve every cap atomically, higher priority first. Refused: skipped
    (``capped:<cap>``) or, with ``when_capped: defer``, deferred to when a slot frees, at
    most ``max_defer`` after the touch first fell due (else ``defer_expired``).

    The touches are marked reserving in SQL first (``reserved_at``, and the channel they
    reserve on), so that a rebuild of Redis running meanwhile counts them. While Redis holds
    no caps of its own (it lost its data) or may evict them, nothing is granted: the touches
    wait (``caps_unavailable``) for the rebuild, which the tick hands to a task of its own."""
    live = sorted((w for w in works if not w.touch.get("test")),
                  key=lambda w: -int(w.touch["priority"]))
    if not live:
        return
    _mark_reserving(rt, live, now)
    by_zone: dict[str, list[Work]] = defaultdict(list)
    for w in live:
        by_zone[w.policy.timezone].append(w)
    for zone, group in by_zone.items():
        requests = [CapRequest(w.user["user_id"], w.channel, w.key, cap_rules(w.policy))
                    for w in group]
        try:
            decisions = rt.caps.reserve_many(requests, now=now, rules_by_channel={},
                                             tz=ZoneInfo(zone))
        except (CapsNeedRebuild, CapsUnsafe) as exc:
            log.warning("caps unavailable, %d touches wait: %s", len(group), exc)
            rt.caps.release_many(requests)  # what an earlier chunk may have granted
            for w in group:
                w.decide("deferred", "caps_unavailable", now)
            continue
        for w, decision in zip(group, decisions, strict=True):
            _apply(w, decision)


def _mark_reserving(rt: Runtime, works: Sequence[Work], now: datetime) -> None:
    """One UPDATE per channel the touches reserve on (a fallback changes it)."""
    by_channel: dict[str, list[int]] = defaultdict(list)
    for w in works:
        by_channel[w.channel].append(w.id)
    with begin_write(rt.db) as conn:
        for channel, ids in by_channel.items():
            conn.execute(update(TOUCHES)
                         .where(among(TOUCHES.c.id, ids), TOUCHES.c.status == "claimed")
                         .values(reserved_at=now, channel=channel))


def rebuild_caps(rt: Runtime) -> int | None:
    """Rebuild the caps in Redis from the held touches of the last ``horizon`` (business
    time): what a restarted or restored Redis needs before it grants anything. Returns the
    reservations loaded, or None when another rebuild is already running."""
    since = rt.clock.now() - timedelta(seconds=rt.caps.horizon_s)
    try:
        count = rebuild_from_store(rt.db, rt.caps, reset=True, since=since)
    except RetryLater:
        return None
    log.warning("caps rebuilt from the database: %d reservations since %s", count,
                since.isoformat())
    return count


def _apply(w: Work, decision: CapDecision) -> None:
    if decision.ok:
        w.reserved = True
        return
    reason = f"capped:{decision.cap}"
    if w.policy.when_capped == "defer" and decision.retry_at is not None:
        first_due = as_utc(w.touch["first_due_at"] or w.touch["due_at"])
        if decision.retry_at <= first_due + w.policy.max_defer:
            w.decide("deferred", reason, decision.retry_at)
            return
        reason = "defer_expired"
    w.decide("suppressed", reason)


def release_caps(rt: Runtime, touches: Sequence[Any]) -> None:
    """A definite rejection frees the touch's cap reservation (``unknown`` keeps it)."""
    requests = [_request_of(t) for t in touches]
    if requests:
        rt.caps.release_many(requests)


def _request_of(touch: Any) -> CapRequest:
    if isinstance(touch, Work):
        return CapRequest(touch.user["user_id"], touch.channel, touch.key)
    return CapRequest(touch["user_id"], touch["channel"],
                      touch_key(touch["enrollment_id"], touch["step_id"]))


# --- rendering -------------------------------------------------------------------------

def render_gate(rt: Runtime, works: Sequence[Work], now: datetime) -> None:
    for w in works:
        try:
            _render(rt, w)
        except RecallError as exc:
            w.decide("failed", f"render:{type(exc).__name__}")
            w.render_error = str(exc)


def _render(rt: Runtime, w: Work) -> None:
    data: Mapping[str, Any] = w.enrollment.get("data") or {}
    context = template_context(
        w.journey, user=w.user, arm=w.enrollment["arm"], variant=w.touch["variant"],
        event=data.get("event"), pools={name: data.get(name) for name in w.journey.pools},
    )
    w.link_target = render_link(w.step, context)
    if w.link_target:
        w.link = short_url(rt.settings.public_base_url, new_code())
        context["link"] = w.link
    rendered = render_touch(w.journey, w.step, variant=w.touch["variant"], context=context,
                            templates_dir=rt.book.templates_dir_for(w.journey))
    w.title, w.text = rendered.title, rendered.text
