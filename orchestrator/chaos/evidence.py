"""Turning what a chaos run collects into the counting's values: the sandbox's record (its
own log of every provider call) and the rows of ``recall export touches|enrollments``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.chaos.count import ProviderRefusal, ProviderSend, StoreEnrollment, StoreTouch

# Errors that refuse a recipient for good (a rate limit, a 5xx or a token error does not).
DEFINITE_CODES: dict[str, frozenset[int]] = {
    "twilio": frozenset({21211, 21408, 21610, 21612, 21614}),
    "wechat": frozenset({40003, 43004, 45028}),
    "wecom": frozenset(),  # WeCom refuses recipients in `fail_list`, filed as excluded
}


def send_channel(entry: Mapping[str, Any]) -> str | None:
    """The channel a record entry sends on, or None for any other call (tokens, lookups)."""
    path, method = str(entry["path"]), str(entry["method"])
    if method != "POST":
        return None
    if path.endswith(("/message/mass/send", "/message/template/send")):
        return "wechat_article"
    if path.endswith("/externalcontact/add_msg_template"):
        return "wecom_group_invite"
    if entry["provider"] == "twilio" and path.endswith("/Messages.json"):
        return "sms"
    return None


@dataclass
class ProviderView:
    """The provider's side of a run: who got what, who was refused, which faults hit."""

    sends: list[ProviderSend] = field(default_factory=list)
    refusals: list[ProviderRefusal] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    send_calls: int = 0
    stormy_calls: int = 0  # calls made while the faults were armed


def provider_view(record: Iterable[Mapping[str, Any]], calm_from: int | None = None
                  ) -> ProviderView:
    """Read the sandbox record (``GET /_sandbox/record`` entries, oldest first); entries
    after ``calm_from`` were made once the faults had stopped."""
    view = ProviderView()
    for entry in record:
        view.calls += 1
        if calm_from is None or int(entry["seq"]) <= calm_from:
            view.stormy_calls += 1
        fault = _fault_of(entry)
        if fault:
            view.faults[fault] += 1
        channel = send_channel(entry)
        if channel is None:
            continue
        view.send_calls += 1
        _read_send(view, channel, entry)
    return view


def _fault_of(entry: Mapping[str, Any]) -> str | None:
    outcome = str(entry["outcome"])
    if outcome.startswith("fault:"):
        return outcome.removeprefix("fault:")
    fault = entry.get("fault")
    return str(fault) if fault else None


def _read_send(view: ProviderView, channel: str, entry: Mapping[str, Any]) -> None:
    outcome, seq = str(entry["outcome"]), int(entry["seq"])
    recipients = [str(r) for r in entry.get("recipients") or []]
    excluded: Mapping[str, str] = entry.get("excluded") or {}
    if outcome == "accepted":
        at = datetime.fromisoformat(str(entry["at"]))
        ref = str(entry["ref"]) if entry.get("ref") is not None else None
        for recipient in recipients:
            if recipient in excluded:
                view.refusals.append(ProviderRefusal(channel, recipient, seq, excluded[recipient]))
            else:
                view.sends.append(ProviderSend(channel, recipient, seq, at, ref))
    elif outcome.startswith("error:"):
        code = outcome.removeprefix("error:")
        if code.lstrip("-").isdigit() and int(code) in DEFINITE_CODES.get(entry["provider"], ()):
            view.refusals += [ProviderRefusal(channel, r, seq, outcome) for r in recipients]


def store_touches(rows: Iterable[Mapping[str, Any]]) -> Iterator[StoreTouch]:
    """``recall export touches`` rows (JSON lines, parsed)."""
    for row in rows:
        yield StoreTouch(
            enrollment_id=int(row["enrollment_id"]), user_id=str(row["user_id"]),
            arm=str(row["arm"]), step_id=str(row["step_id"]), channel=str(row["channel"]),
            status=str(row["status"]), reason=row.get("reason") or None,
            provider_message_id=row.get("provider_message_id") or None,
        )


def store_enrollments(rows: Iterable[Mapping[str, Any]]) -> Iterator[StoreEnrollment]:
    """``recall export enrollments`` rows (JSON lines, parsed)."""
    for row in rows:
        yield StoreEnrollment(int(row["enrollment_id"]), str(row["user_id"]), str(row["arm"]))


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)

