"""Failed-payment webhooks → ``payment_failed`` events.

Each provider's payload is parsed into one ``FailedPayment`` (after its signature was
checked), then ``accept_failed_payment`` makes it an event through the one ingest path,
so a rescue journey with ``entry.event: payment_failed`` enrolls the payer in the same
request. ``webhook_receipts`` keeps one row per provider delivery id: a replay is
acknowledged and ignored; a payer that maps to no user is acknowledged and recorded as
``unmatched`` (no event).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import xmltodict
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.errors import InputError
from orchestrator.store.db import begin_write
from orchestrator.store.tables import USERS
from orchestrator.store.tables import WEBHOOK_RECEIPTS as RECEIPTS

EVENT_NAME = "payment_failed"
STRIPE_TYPES = frozenset({"invoice.payment_failed", "payment_intent.payment_failed"})
# Stripe amounts are in the currency's minor unit, except for these (Stripe's list).
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
WECHATPAY_TZ = ZoneInfo("Asia/Shanghai")  # time_end is Beijing time, yyyyMMddHHmmss


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # a new payment_failed event was ingested
    DUPLICATE = "duplicate"  # this delivery id was seen before: ignored
    UNMATCHED = "unmatched"  # the payer is no known user: recorded, no event
    IGNORED = "ignored"  # a valid notification that is not a payment failure


@dataclass(frozen=True)
class FailedPayment:
    source: str  # generic | stripe | wechatpay
    external_id: str  # the provider's id of this notification (replay key)
    user_id: str | None  # as the provider names it (generic, Stripe metadata)
    openid: str | None  # WeChat Pay names the payer by OpenID
    amount: float | None  # major units (yuan, dollars)
    currency: str | None
    reason: str | None
    occurred_at: datetime
    order_id: str | None = None

    @property
    def event_id(self) -> str:
        return f"{self.source}:{self.external_id}"[:128]

    def event(self, user_id: str) -> dict[str, Any]:
        """The documented event this failure becomes."""
        props = {
            "amount": self.amount,
            "currency": self.currency,
            "reason": self.reason,
            "source": self.source,
            "webhook_id": self.external_id,
        }
        if self.order_id:
            props["order_id"] = self.order_id
        return {
            "event_id": self.event_id,
            "user_id": user_id,
            "name": EVENT_NAME,
            "ts": self.occurred_at.isoformat(),
            "value": self.amount,
            "props": props,
        }


# ---------------------------------------------------------------- generic


class GenericNotice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=150)
    type: str
    user_id: str | None = Field(default=None, max_length=128)
    amount: float | None = None
    currency: str | None = Field(default=None, max_length=8)
    occurred_at: AwareDatetime | None = None
    reason: str | None = Field(default=None, max_length=200)


def _json_object(raw: bytes, source: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"{source} webhook body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InputError(f"{source} webhook body must be a JSON object")
    return body


def parse_generic(raw: bytes, *, now: datetime) -> FailedPayment | None:
    """The failure in a generic webhook; ``None`` for another ``type``."""
    try:
        notice = GenericNotice.model_validate(_json_object(raw, "generic"))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InputError(f"generic webhook: {field}: {first['msg']}", field=field) from None
    if notice.type != EVENT_NAME:
        return None
    return FailedPayment(
        source="generic",
        external_id=notice.id,
        user_id=notice.user_id,
        openid=None,
        amount=notice.amount,
        currency=notice.currency.upper() if notice.currency else None,
        reason=notice.reason,
        occurred_at=(notice.occurred_at or now).astimezone(UTC),
    )


# ---------------------------------------------------------------- stripe


def _dict(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else empty: a payload's optional parts may be
    anything, and a wrong shape means "not there", never a crash."""
    return value if isinstance(value, dict) else {}


def _stripe_user(obj: Mapping[str, Any]) -> str | None:
    """``metadata.user_id`` of the object (for invoices, also the subscription's)."""
    candidates = [
        obj.get("metadata"),
        _dict(obj.get("subscription_details")).get("metadata"),
        _dict(_dict(obj.get("parent")).get("subscription_details")).get("metadata"),
    ]
    for metadata in candidates:
        if isinstance(metadata, dict) and metadata.get("user_id"):
            return str(metadata["user_id"])
    return None


def _stripe_amount(obj: Mapping[str, Any]) -> float | None:
    minor = next((obj[k] for k in ("amount_due", "amount") if obj.get(k) is not None), None)
    if not isinstance(minor, int | float) or isinstance(minor, bool) or abs(minor) > 1e15:
        return None
    currency = str(obj.get("currency") or "").lower()
    return float(minor) if currency in ZERO_DECIMAL else minor / 100


def _stripe_reason(obj: Mapping[str, Any], event_type: str) -> str:
    error = _dict(obj.get("last_payment_error") or obj.get("last_finalization_error"))
    return str(error.get("decline_code") or error.get("code") or error.get("message")
               or event_type)[:200]


def parse_stripe(raw: bytes, *, now: datetime) -> FailedPayment | None:
    """The failure in a Stripe event; ``None`` for event types other than payment failures."""
    event = _json_object(raw, "stripe")
    if event.get("type") not in STRIPE_TYPES:
        return None
    obj = _dict(event.get("data")).get("object")
    if not isinstance(event.get("id"), str) or not event["id"] or not isinstance(obj, dict):
        raise InputError("stripe event needs an id and data.object", field="data.object")
    order_id = obj.get("id")
    return FailedPayment(
        source="stripe",
        external_id=event["id"],
        user_id=_stripe_user(obj),
        openid=None,
        amount=_stripe_amount(obj),
        currency=str(obj["currency"]).upper()[:8] if obj.get("currency") else None,
        reason=_stripe_reason(obj, event["type"]),
        occurred_at=_unix_time(event.get("created"), now),
        order_id=str(order_id)[:128] if order_id is not None else None,
    )


def _unix_time(value: Any, now: datetime) -> datetime:
    """Stripe's ``created`` (unix seconds); ``now`` when absent or not a possible time."""
    if not isinstance(value, int) or isinstance(value, bool):
        return now
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return now


# ---------------------------------------------------------------- wechatpay


def parse_wechatpay_xml(raw: bytes) -> dict[str, Any]:
    """The fields of a WeChat Pay v2 notify (``<xml>…</xml>``); entities are refused."""
    try:
        doc = xmltodict.parse(raw, disable_entities=True)
    except Exception as exc:  # expat raises several types; all mean "not XML we accept"
        raise InputError(f"wechatpay notify is not well-formed XML: {exc}") from None
    fields = doc.get("xml") if isinstance(doc, dict) else None
    if not isinstance(fields, dict):
        raise InputError("wechatpay notify must be an <xml> document")
    return fields


def _wechatpay_time(value: Any, now: datetime) -> datetime:
    try:
        local = datetime.strptime(str(value), "%Y%m%d%H%M%S").replace(tzinfo=WECHATPAY_TZ)
    except ValueError:
        return now
    return local.astimezone(UTC)


def _field(fields: Mapping[str, Any], name: str) -> str | None:
    """A notify field as text; a nested element where text belongs is refused."""
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise InputError(f"wechatpay notify: <{name}> must hold text", field=name)


def parse_wechatpay(fields: Mapping[str, Any], *, now: datetime) -> FailedPayment | None:
    """The failure in a verified notify; ``None`` unless ``result_code`` is ``FAIL``."""
    if _field(fields, "result_code") != "FAIL":
        return None
    external_id = _field(fields, "transaction_id") or _field(fields, "out_trade_no")
    if not external_id:
        raise InputError("wechatpay notify has neither transaction_id nor out_trade_no")
    fee = _field(fields, "total_fee") or ""
    return FailedPayment(
        source="wechatpay",
        external_id=external_id,
        user_id=None,
        openid=_field(fields, "openid"),
        amount=int(fee) / 100 if fee.isascii() and fee.isdigit() and len(fee) < 16 else None,
        currency=(_field(fields, "fee_type") or "CNY")[:8],
        reason=(_field(fields, "err_code_des") or _field(fields, "err_code") or "FAIL")[:200],
        occurred_at=_wechatpay_time(_field(fields, "time_end"), now),
        order_id=_field(fields, "out_trade_no"),
    )


# ---------------------------------------------------------------- acceptance

Ingest = Callable[[Sequence[Mapping[str, Any]]], Any]  # returns an IngestResult


def _upsert(engine: Engine) -> Any:
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def receipt_seen(conn: Connection, source: str, external_id: str) -> bool:
    found = conn.execute(
        select(RECEIPTS.c.status).where(
            RECEIPTS.c.source == source, RECEIPTS.c.external_id == external_id
        )
    ).first()
    return found is not None


def resolve_user(conn: Connection, payment: FailedPayment) -> str | None:
    """The known, not erased, user the payment names (by user id, else by OpenID)."""
    if payment.user_id:
        clause = USERS.c.user_id == payment.user_id
    elif payment.openid:
        clause = USERS.c.openid == payment.openid
    else:
        return None
    found = conn.execute(
        select(USERS.c.user_id).where(clause, USERS.c.erased.is_(False)).limit(1)
    ).scalar()
    return str(found) if found is not None else None


def _store_receipt(
    engine: Engine, payment: FailedPayment, *, status: str, user_id: str | None, now: datetime
) -> bool:
    """Insert the receipt; False when another delivery of the same id got there first."""
    stmt = (
        _upsert(engine)(RECEIPTS)
        .values(source=payment.source, external_id=payment.external_id[:160], status=status,
                user_id=user_id, received_at=now)
        .on_conflict_do_nothing()
    )
    with begin_write(engine) as conn:
        return bool(conn.execute(stmt).rowcount)


def accept_failed_payment(
    engine: Engine, payment: FailedPayment, *, now: datetime, ingest: Ingest
) -> Outcome:
    """Turn a verified failure into an event, exactly once per provider delivery id.

    The event is ingested *before* the receipt is written: its ``event_id`` derives from the
    delivery id, so a crash in between only means the retry finds a duplicate event.
    """
    with engine.connect() as conn:
        if receipt_seen(conn, payment.source, payment.external_id[:160]):
            return Outcome.DUPLICATE
        user_id = resolve_user(conn, payment)
    if user_id is None:
        stored = _store_receipt(engine, payment, status="unmatched", user_id=None, now=now)
        return Outcome.UNMATCHED if stored else Outcome.DUPLICATE
    result = ingest([payment.event(user_id)])
    if result.rejected:
        raise InputError(
            f"{payment.source} webhook {payment.external_id}: {result.rejected[0].error}"
        )
    stored = _store_receipt(engine, payment, status="matched", user_id=user_id, now=now)
    return Outcome.ACCEPTED if stored and result.accepted else Outcome.DUPLICATE
