"""The gates of the send pipeline that apply the policy (reach, consent, quiet hours, caps)
and render the message. Order and meaning are documented in ``pipeline``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from orchestrator.engine.pipeline import Gate, Work, inactive_gate, unreachable_reason
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.durations import next_in_window
from orchestrator.journeys.render import render_link, render_touch, template_context
from orchestrator.tracking.links import new_code, short_url


def gates_for(rt: Runtime) -> list[Gate]:
    return [
        inactive_gate,
        lambda works, now: reach_gate(rt, works, now),
        quiet_gate,
        lambda works, now: render_gate(rt, works, now),
    ]


def release_caps(rt: Runtime, touches: Sequence[Any]) -> None:
    """A definite rejection frees the touch's cap reservation."""
    return None


# --- reach and consent, with channel fallback ------------------------------------------

def reach_gate(rt: Runtime, works: Sequence[Work], now: datetime) -> None:
    for w in works:
        while True:
            reason = unreachable_reason(w.channel, w.user)
            if reason is None:
                break
            w.tried.append(w.channel)
            fallback = w.step.fallback
            if fallback and fallback not in w.tried:
                w.channel = fallback
                continue
            w.decide("suppressed", reason)
            break


# --- quiet hours -----------------------------------------------------------------------

def quiet_gate(works: Sequence[Work], now: datetime) -> None:
    for w in works:
        local_day = now.astimezone(w.tz).date()
        window = w.policy.send_window(w.channel, local_day)
        if window is None:
            continue
        allowed = next_in_window(now, w.tz, window)
        if allowed > now:
            w.decide("deferred", f"quiet_hours:{w.channel}", allowed)


# --- rendering -------------------------------------------------------------------------

def render_gate(rt: Runtime, works: Sequence[Work], now: datetime) -> None:
    for w in works:
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
                                templates_dir=rt.settings.templates_dir)
        w.title, w.text = rendered.title, rendered.text
