"""SQLModel tables. Times are stored as UTC (``UTCDateTime`` returns aware datetimes).

Bulk paths use SQLAlchemy Core on ``Model.__table__`` (multi-row insert, ON CONFLICT DO
NOTHING); the ORM classes are for reading and small updates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from orchestrator.store.types import UTCDateTime

# BIGINT on PostgreSQL, INTEGER on SQLite (so that SQLite's rowid autoincrement still works).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _ts(*, index: bool = False, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), index=index, nullable=nullable))


def _empty() -> dict[str, Any]:
    return {}


def _json() -> Any:
    # The Column default serves Core inserts too (bulk paths bypass the ORM's factory).
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=_empty))


class User(SQLModel, table=True):
    __tablename__ = "users"

    user_id: str = Field(primary_key=True, max_length=128)
    openid: str | None = Field(default=None, index=True, max_length=128)
    unionid: str | None = Field(default=None, index=True, max_length=128)
    external_userid: str | None = Field(default=None, index=True, max_length=128)
    wecom_sender: str | None = Field(default=None, max_length=128)
    phone: str | None = Field(default=None, index=True, max_length=32)
    timezone: str | None = Field(default=None, max_length=64)
    sms_opt_out: bool = False
    wechat_followed: bool | None = None
    attributes: dict[str, Any] = _json()
    erased: bool = False
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_user_ts", "user_id", "ts"),
        Index("ix_events_name_ts", "name", "ts"),
    )

    event_id: str = Field(primary_key=True, max_length=128)
    user_id: str = Field(max_length=128)
    name: str = Field(max_length=64)
    ts: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    value: float | None = None
    props: dict[str, Any] = _json()
    ingested_at: datetime | None = _ts()


class OptOut(SQLModel, table=True):
    """Consent withdrawn for one channel, by user or by a bare identity (an inbound phone)."""

    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("channel", "identity", name="uq_opt_out"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    channel: str = Field(max_length=32)  # sms | wechat_article | wecom_group_invite | all
    identity: str = Field(max_length=160)  # "user:<id>", "phone:+86…", "openid:…"
    user_id: str | None = Field(default=None, index=True, max_length=128)
    reason: str = Field(max_length=64)  # sms_reply:TD, unfollow, unsubscribe, provider:21610
    created_at: datetime | None = _ts()


class JourneyState(SQLModel, table=True):
    __tablename__ = "journey_states"

    journey_id: str = Field(primary_key=True, max_length=128)
    version: str = Field(max_length=64)
    state: str = Field(default="active", max_length=16)  # active | paused | stopped
    priority: int = 0
    last_schedule_run_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class JourneyVersion(SQLModel, table=True):
    """The exact files a version was made of, so an enrollment runs the version it entered."""

    __tablename__ = "journey_versions"

    journey_id: str = Field(primary_key=True, max_length=128)
    version: str = Field(primary_key=True, max_length=64)
    source: dict[str, Any] = _json()  # {"journey": yaml text, "path": ..., "templates": {...}}
    created_at: datetime | None = _ts()


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"
    __table_args__ = (
        Index(
            "uq_enrollment_active",
            "journey_id",
            "user_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
        Index("ix_enrollments_due", "state", "due_at"),
        Index("ix_enrollments_journey_user", "journey_id", "user_id", "entered_at"),
        Index("ix_enrollments_lease", "lease_until"),  # every tick reclaims expired leases
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    journey_id: str = Field(max_length=128)
    journey_version: str = Field(max_length=64)
    user_id: str = Field(max_length=128)
    arm: str = Field(max_length=16)  # control | treatment
    state: str = Field(default="active", max_length=16)  # active | completed | exited
    entered_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    exited_at: datetime | None = _ts()
    exit_reason: str | None = Field(default=None, max_length=64)
    converted_at: datetime | None = _ts()
    cursor: int = 0  # index of the next step to run
    due_at: datetime | None = _ts()  # when the cursor runs; NULL while a touch is in flight
    lease_until: datetime | None = _ts()  # real time: claim lease of the cursor
    trigger_event_id: str | None = Field(default=None, max_length=128)
    data: dict[str, Any] = _json()  # event props, pool draws (coupon_code)


class SendBatch(SQLModel, table=True):
    """Frozen before its first provider call; ``id`` is the provider idempotency key.

    The row carries the delivery state machine: ``state`` (``frozen``: nothing is in doubt,
    send; ``unknown``: a call may have reached the provider, look it up first; ``sent`` /
    ``failed``: done), the attempt counters and the next attempt time. Whoever holds the
    lease (``lease_token`` until ``lease_until``, real time) drives it.
    """

    __tablename__ = "send_batches"
    __table_args__ = (
        Index("ix_send_batches_due", "state", "next_attempt_at"),
        Index("ix_send_batches_awaiting", "channel", "confirmed_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(max_length=32)
    journey_id: str = Field(max_length=128)
    step_id: str = Field(max_length=64)
    state: str = Field(default="frozen", max_length=16)  # frozen | unknown | sent | failed
    attempts: int = 0  # provider calls started (sends and lookups)
    unanswered: int = 0  # attempts in a row that left the outcome in doubt
    next_attempt_at: datetime | None = _ts()  # real time; NULL: at once
    lease_until: datetime | None = _ts()  # real time
    lease_token: str | None = Field(default=None, max_length=32)
    first_attempt_at: datetime | None = _ts()  # business time of the first provider call
    provider_ref: str | None = Field(default=None, max_length=128)
    sender: str | None = Field(default=None, max_length=128)  # WeCom staff member
    error: str | None = None
    result: dict[str, Any] = _json()  # provider's aggregate result (MASSSENDJOBFINISH counts)
    payload: dict[str, Any] = _json()  # the frozen request, so a retry repeats the same call
    created_at: datetime | None = _ts()
    sent_at: datetime | None = _ts()
    confirmed_at: datetime | None = _ts()  # WeCom: staff confirmed the task


class Touch(SQLModel, table=True):
    __tablename__ = "touches"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id", name="uq_touch_key"),
        Index("ix_touches_claim", "status", "due_at"),
        Index("ix_touches_user", "user_id", "status"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    enrollment_id: int = Field(sa_column=Column(BigId, nullable=False))
    journey_id: str = Field(max_length=128)
    journey_version: str = Field(max_length=64)
    user_id: str = Field(max_length=128)
    arm: str = Field(default="treatment", max_length=16)
    step_id: str = Field(max_length=64)
    channel: str = Field(max_length=32)
    planned_channel: str | None = Field(default=None, max_length=32)  # before fallback
    variant: str | None = Field(default=None, max_length=32)
    # A step with a rung holdout: holdout (skipped, never sent) or treatment; else NULL.
    rung_arm: str | None = Field(default=None, max_length=16)
    priority: int = 0
    # scheduled|claimed|sending|unknown|sent|delivered|failed|suppressed|cancelled
    status: str = Field(default="scheduled", max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    due_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    first_due_at: datetime | None = _ts()
    lease_until: datetime | None = _ts()  # real time
    claim_token: str | None = Field(default=None, max_length=32)
    attempts: int = 0
    batch_id: str | None = Field(default=None, index=True, max_length=64)
    # Business time of the cap reservation. Set on a ``claimed`` touch just before the caps
    # are checked, so that a rebuild of Redis from SQL sees reservations not yet frozen.
    reserved_at: datetime | None = _ts(index=True)
    sent_at: datetime | None = _ts()
    delivered_at: datetime | None = _ts()
    clicked_at: datetime | None = _ts()
    joined_at: datetime | None = _ts()
    converted_at: datetime | None = _ts()
    provider_message_id: str | None = Field(default=None, index=True, max_length=128)
    link_code: str | None = Field(default=None, max_length=32)
    segments: int = 0
    cost: float = 0.0
    test: bool = False


class Link(SQLModel, table=True):
    __tablename__ = "links"

    code: str = Field(primary_key=True, max_length=32)
    touch_id: int | None = Field(default=None, sa_column=Column(BigId, index=True))
    target_url: str
    clicks: int = 0
    first_clicked_at: datetime | None = _ts()
    created_at: datetime | None = _ts()


class Conversion(SQLModel, table=True):
    __tablename__ = "conversions"

    enrollment_id: int = Field(sa_column=Column(BigId, primary_key=True))
    journey_id: str = Field(max_length=128, index=True)
    user_id: str = Field(max_length=128)
    arm: str = Field(max_length=16)
    event_id: str = Field(max_length=128)
    converted_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    value: float | None = None
    touch_id: int | None = Field(default=None, sa_column=Column(BigId))  # None = unattributed


class WebhookReceipt(SQLModel, table=True):
    """One row per provider delivery id: replays are acknowledged and ignored."""

    __tablename__ = "webhook_receipts"

    source: str = Field(primary_key=True, max_length=32)
    external_id: str = Field(primary_key=True, max_length=160)
    status: str = Field(max_length=16)  # matched | unmatched
    user_id: str | None = Field(default=None, max_length=128)
    received_at: datetime | None = _ts()


class UserFeatures(SQLModel, table=True):
    """Derived per user at ``computed_at`` (features never read events after it)."""

    __tablename__ = "user_features"

    user_id: str = Field(primary_key=True, max_length=128)
    computed_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    tier: str = Field(default="active", max_length=16, index=True)
    recency_days: float | None = None
    frequency: int = 0
    monetary: float = 0.0
    rfm_r: int = 0
    rfm_f: int = 0
    rfm_m: int = 0
    churn_score: float | None = None
    features: dict[str, Any] = _json()


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64)
    subject: str = Field(max_length=160)
    detail: dict[str, Any] = _json()


class ClockState(SQLModel, table=True):
    """The virtual business time, when one is set (``recall simulate``); one row, id 1."""

    __tablename__ = "clock_state"

    id: int = Field(default=1, primary_key=True)
    virtual_now: datetime | None = _ts()


class KeyValue(SQLModel, table=True):
    """Small named facts every process must agree on (e.g. the last dispatcher tick)."""

    __tablename__ = "kv"

    key: str = Field(primary_key=True, max_length=128)
    value: dict[str, Any] = _json()
    updated_at: datetime | None = _ts()


__all__ = [
    "AuditLog",
    "ClockState",
    "Conversion",
    "Enrollment",
    "Event",
    "JourneyState",
    "JourneyVersion",
    "KeyValue",
    "Link",
    "OptOut",
    "SendBatch",
    "Touch",
    "User",
    "UserFeatures",
    "WebhookReceipt",
]

