"""Everything the sandbox keeps, in memory, behind one lock.

``SandboxState`` is usable without HTTP: ``request(...)`` runs a provider call exactly as the
server would (faults, rules, record), and the control methods (``reset``, ``configure``,
``set_clock``, ``add_fault``, ``set_followers``, ``wecom_confirm``, ``flush``...) are what the
``/_sandbox`` endpoints call. Provider calls are short, CPU-only critical sections; callbacks
are built under the lock but posted outside it.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

from orchestrator.clock import Clock, ManualClock, SystemClock
from orchestrator.sandbox.calls import (
    PROVIDERS,
    BodyKind,
    Call,
    Endpoint,
    Outcome,
    Provider,
    ProviderError,
    Reply,
)
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.faults import BEFORE_CALL, Fault, FaultBook, FaultSpec
from orchestrator.sandbox.outbox import AutoFlusher, Delivery, Outbox, Pending, deliver
from orchestrator.sandbox.record import Record, RecordEntry
from orchestrator.sandbox.tokens import TokenBook
from orchestrator.sandbox.twilio_sms import ENDPOINTS as TWILIO_ENDPOINTS
from orchestrator.sandbox.twilio_sms import TwilioSMS
from orchestrator.sandbox.wechat_oa import ENDPOINTS as WECHAT_ENDPOINTS
from orchestrator.sandbox.wechat_oa import WeChatOA
from orchestrator.sandbox.wecom import ENDPOINTS as WECOM_ENDPOINTS
from orchestrator.sandbox.wecom import WeCom

ENDPOINTS: tuple[Endpoint, ...] = (*WECHAT_ENDPOINTS, *WECOM_ENDPOINTS, *TWILIO_ENDPOINTS)
BUSINESS_TIMEZONE = "Asia/Shanghai"
MASKED_QUERY_KEYS = frozenset({"secret", "corpsecret"})


class ProviderAPI(Protocol):
    provider: str

    def reset(self) -> None: ...
    def error_reply(self, err: ProviderError) -> Reply: ...
    def fault_reply(self, kind: str) -> Reply: ...
    def settle(self, item: Pending) -> Delivery | None: ...


def find_endpoint(method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The provider API served at ``method path`` and its path parameters."""
    for endpoint in ENDPOINTS:
        params = endpoint.match(method, path)
        if params is not None:
            return endpoint, params
    return None


class SandboxState:
    """The sandbox's memory: providers' data, tokens, record, faults, clock, outbox, config."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        timezone: str = BUSINESS_TIMEZONE,
    ) -> None:
        self.lock = threading.RLock()
        self.config = config or SandboxConfig()
        self._base_clock: Clock = clock or SystemClock()
        self.clock: Clock = self._base_clock
        self.business_tz = ZoneInfo(timezone)
        self.prefix = secrets.token_hex(4)  # keeps ids unique across sandbox instances
        self.monotonic = monotonic  # real time, for the providers' rate rules
        self.tokens = TokenBook(monotonic)
        self.record = Record()
        self.faults = FaultBook(seed)
        self.outbox = Outbox()
        self._counters: dict[str, Iterator[int]] = {}
        self.wechat = WeChatOA(self)
        self.wecom = WeCom(self)
        self.twilio = TwilioSMS(self)
        self._flush_lock = threading.Lock()
        self._flusher: AutoFlusher | None = None
        self._apply_auto_flush()

    # -- helpers the providers use -----------------------------------------------------------

    def now(self) -> datetime:
        """Business time (UTC): quotas, send times, ``at`` in the record."""
        return self.clock.now()

    def local_now(self) -> datetime:
        """Business time in the providers' zone (Asia/Shanghai): months and days for quotas."""
        return self.clock.now().astimezone(self.business_tz)

    def unix_now(self) -> int:
        return int(self.clock.now().timestamp())

    def next_id(self, series: str, start: int) -> int:
        """Next number of an id series; series survive ``reset`` so ids never repeat."""
        counter = self._counters.get(series)
        if counter is None:
            counter = self._counters[series] = itertools.count(start)
        return next(counter)

    def provider(self, name: str) -> ProviderAPI:
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider {name!r}; expected one of {PROVIDERS}")
        api: ProviderAPI = getattr(self, name)
        return api

    # -- provider calls ------------------------------------------------------------------------

    def take_fault(self, provider: str, path: str, method: str | None = None) -> Fault | None:
        with self.lock:
            return self.faults.take(provider, path, method)

    def run(self, endpoint: Endpoint, call: Call, fault: Fault | None = None) -> Reply:
        """Apply ``fault`` (if it acts before the call) or the provider's rules; record it."""
        api = self.provider(call.provider)
        with self.lock:
            at = self.now()
            if fault is not None and fault.kind in BEFORE_CALL:
                seq = self._file(endpoint, call, at, f"fault:{fault.kind}")
                return _fault_reply(api, fault, seq)
            try:
                if call.invalid_body:
                    raise ProviderError(47001, "data format error: the body is not a JSON object")
                done = endpoint.operation(api, call)
            except ProviderError as err:
                seq = self._file(endpoint, call, at, err.outcome)
                reply = api.error_reply(err)
                reply.seq = seq
                return reply
            seq = self._file(endpoint, call, at, done.outcome, done, fault)
        return _reply(done, fault, seq)

    def handle(self, endpoint: Endpoint, call: Call) -> Reply:
        """``run`` with whatever fault is armed (no waiting: latency/timeout only set delays)."""
        return self.run(endpoint, call, self.take_fault(call.provider, call.path, call.method))

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        form: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> Reply:
        """Run one provider call without HTTP (tests, embedding). Raises LookupError if no
        provider API lives at ``method path``."""
        found = find_endpoint(method, path)
        if found is None:
            raise LookupError(f"the sandbox serves no provider API at {method} {path}")
        endpoint, params = found
        kind: BodyKind = endpoint.body_kind
        body: dict[str, Any] = {}
        raw = b""
        if form is not None:
            body, raw, kind = dict(form), urlencode(form).encode(), "form"
        elif json_body is not None:
            body, raw, kind = json_body, json.dumps(json_body).encode(), "json"
        call = Call(
            endpoint.provider,
            method.upper(),
            path,
            dict(query or {}),
            body,
            raw,
            kind,
            params,
            auth,
        )
        return self.handle(endpoint, call)

    def _file(
        self,
        endpoint: Endpoint,
        call: Call,
        at: datetime,
        outcome: str,
        done: Outcome | None = None,
        fault: Fault | None = None,
    ) -> int:
        summary = _summary(call)
        seq = self.record.next_seq()
        self.record.append(
            RecordEntry(
                seq=seq,
                provider=call.provider,
                method=call.method,
                path=call.path,
                at=at,
                outcome=outcome,
                raw=b"" if summary is not None else call.raw,
                body_kind=call.body_kind,
                summary=summary,
                recipients_field=endpoint.recipients,
                excluded=done.excluded if done else None,
                ref=done.ref if done else None,
                fault=fault.kind if fault else None,
            )
        )
        return seq

    # -- control -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all data, faults, queued callbacks and any frozen clock; keep config and
        tokens (clients stay logged in; use a token_expired fault to drop them)."""
        with self.lock:
            for name in PROVIDERS:
                self.provider(name).reset()
            self.record.clear()
            self.faults.clear()
            self.outbox.clear()
            self.clock = self._base_clock

    def configure(self, changes: Mapping[str, Any]) -> SandboxConfig:
        with self.lock:
            self.config = self.config.updated(dict(changes))
        self._apply_auto_flush()
        return self.config

    def set_clock(self, now: datetime | None) -> datetime:
        """Freeze business time at ``now`` (None: back to the clock the state was made with,
        wall time by default)."""
        with self.lock:
            self.clock = ManualClock(now) if now is not None else self._base_clock
            return self.clock.now()

    def add_fault(self, spec: FaultSpec) -> dict[str, Any]:
        with self.lock:
            if spec.kind == "token_expired":
                expired = self.tokens.expire_all(spec.provider)
                return {"kind": spec.kind, "expired_tokens": expired}
            fault_id = self.faults.arm(spec)
            return {"kind": spec.kind, "id": fault_id, "armed": self.faults.armed()}

    def remove_fault(self, fault_id: int) -> bool:
        """Disarm one fault by the id ``add_fault`` gave; False if it is gone already."""
        with self.lock:
            return self.faults.disarm(fault_id)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def set_followers(self, changes: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
        """``{"wechat": {openid: state}, "wecom": {...}, "twilio": {...}}`` (validated first)."""
        setters = {
            "wechat": self.wechat.set_followers,
            "wecom": self.wecom.set_customers,
            "twilio": self.twilio.set_numbers,
        }
        unknown = set(changes) - set(setters)
        if unknown:
            raise ValueError(f"unknown provider(s) {sorted(unknown)}; expected {PROVIDERS}")
        with self.lock:
            for name, states in changes.items():
                setters[name](dict(states))
        return {name: len(states) for name, states in changes.items()}

    def wecom_confirm(self, msgid: str, userid: str | None = None) -> dict[str, Any]:
        with self.lock:
            return self.wecom.confirm(msgid, userid)

    def wecom_join(
        self, external_userid: str, *, config_id: str | None = None, chat_id: str | None = None
    ) -> dict[str, Any]:
        with self.lock:
            return self.wecom.join(external_userid, config_id=config_id, chat_id=chat_id)

    def twilio_inbound(self, sender: str, body: str, to: str | None = None) -> dict[str, Any]:
        with self.lock:
            return self.twilio.inbound(sender, body, to)

    def records(
        self,
        provider: str | None = None,
        *,
        since: int = 0,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The record as JSON-ready dicts (parsed outside the lock)."""
        with self.lock:
            entries = list(self.record.select(provider, since=since, outcome=outcome, limit=limit))
        return [entry.as_json() for entry in entries]

    def flush(self) -> dict[str, Any]:
        """Settle every queued callback (statuses move on) and POST them; one flush at a time."""
        with self._flush_lock:
            with self.lock:
                items = self.outbox.drain()
                deliveries = [
                    d for d in (self.provider(i.provider).settle(i) for i in items) if d is not None
                ]
                timeout_s = self.config.callback_timeout_s
            results = deliver(deliveries, timeout_s)
        delivered = sum(1 for r in results if r.get("status") is not None and r["status"] < 400)
        return {
            "settled": len(items),
            "delivered": delivered,
            "failed": len(results) - delivered,
            "results": results,
        }

    def pending_callbacks(self) -> int:
        with self.lock:
            return len(self.outbox)

    def close(self) -> None:
        """Stop the auto-flush thread, if any."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.stop()

    def _apply_auto_flush(self) -> None:
        interval = self.config.auto_flush_s
        current = self._flusher
        if current is not None and current.interval_s == interval:
            return
        self.close()
        if interval is not None:
            self._flusher = AutoFlusher(self.flush, interval)
            self._flusher.start()


def _fault_reply(api: ProviderAPI, fault: Fault, seq: int) -> Reply:
    """The answer to a call a fault stopped before it ran."""
    if fault.kind == "stall":  # what a gateway answers once it gave up on the provider
        return Reply(504, text="Gateway Timeout", delay_s=fault.seconds, seq=seq)
    reply = api.fault_reply(fault.kind)
    if fault.kind == "rate_limit" and fault.retry_after is not None:
        reply.headers["Retry-After"] = str(fault.retry_after)
    reply.seq = seq
    return reply


def _reply(done: Outcome, fault: Fault | None, seq: int) -> Reply:
    """The answer to a call that ran; ``latency`` was already waited out before it ran."""
    reply = Reply(done.status, done.payload, seq=seq)
    if fault is not None and fault.kind == "timeout":
        reply.delay_s = fault.seconds
    if fault is not None and fault.kind == "drop":
        reply.drop = True
    return reply


def _summary(call: Call) -> dict[str, Any] | None:
    """What to record for calls whose raw body is not worth keeping (GET, file uploads)."""
    kind: BodyKind = call.body_kind
    if kind == "query":
        return {
            k: ("***" if k in MASKED_QUERY_KEYS else v)
            for k, v in call.query.items()
            if k != "access_token"
        }
    if kind == "multipart":
        return dict(call.body)
    return None


def parse_form(raw: bytes) -> dict[str, str]:
    """A form-urlencoded body (last value wins, as Twilio reads single-valued fields)."""
    return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))


__all__ = ["ENDPOINTS", "SandboxState", "find_endpoint", "parse_form", "Provider"]
