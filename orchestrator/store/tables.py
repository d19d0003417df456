"""The tables as SQLAlchemy Core ``Table`` objects, for bulk statements.

SQLModel puts each table on its class as ``__table__`` without a type; naming them once
here keeps the ``type: ignore`` in one place and gives every module the same names.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from orchestrator.store import models


def _table(model: type) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


USERS = _table(models.User)
EVENTS = _table(models.Event)
OPT_OUTS = _table(models.OptOut)
JOURNEY_STATES = _table(models.JourneyState)
JOURNEY_VERSIONS = _table(models.JourneyVersion)
ENROLLMENTS = _table(models.Enrollment)
SEND_BATCHES = _table(models.SendBatch)
TOUCHES = _table(models.Touch)
LINKS = _table(models.Link)
CONVERSIONS = _table(models.Conversion)
WEBHOOK_RECEIPTS = _table(models.WebhookReceipt)
USER_FEATURES = _table(models.UserFeatures)
AUDIT_LOG = _table(models.AuditLog)
CLOCK_STATE = _table(models.ClockState)
KV = _table(models.KeyValue)
