"""Which touch gets the credit for a conversion. Pure: plain values in, an id out.

The default model, ``LastTouch``, credits the last touch that was actually *sent*
(status ``sent`` or ``delivered``, ``sent_at`` at or before the conversion) of the
converting enrollment; with none, the conversion is *unattributed* (``None``). Touches
that were scheduled, suppressed, failed, cancelled or whose outcome is unknown never get
credit, and neither does anything sent after the conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Protocol

from orchestrator.clock import as_utc

SENT_STATUSES = frozenset({"sent", "delivered"})


@dataclass(frozen=True)
class TouchView:
    """What attribution needs to know about one touch of the converting enrollment."""

    id: int
    status: str
    sent_at: datetime | None


class AttributionModel(Protocol):
    """Chooses the touch credited with a conversion, or ``None`` for unattributed."""

    name: ClassVar[str]

    def attribute(self, conversion_at: datetime, touches: Sequence[TouchView]) -> int | None:
        ...


def was_sent_before(touch: TouchView, conversion_at: datetime) -> bool:
    """True when the touch reached the provider at or before the conversion."""
    return (
        touch.status in SENT_STATUSES
        and touch.sent_at is not None
        and as_utc(touch.sent_at) <= as_utc(conversion_at)
    )


class LastTouch:
    """Credit the latest sent touch; equal ``sent_at`` goes to the later-created (higher id)."""

    name: ClassVar[str] = "last_touch"

    def attribute(self, conversion_at: datetime, touches: Sequence[TouchView]) -> int | None:
        eligible = [t for t in touches if was_sent_before(t, conversion_at)]
        if not eligible:
            return None
        latest = max(eligible, key=lambda t: (as_utc(t.sent_at), t.id))  # type: ignore[arg-type]
        return latest.id


DEFAULT_MODEL: AttributionModel = LastTouch()


def attribute(
    conversion_at: datetime,
    touches: Sequence[TouchView],
    *,
    model: AttributionModel = DEFAULT_MODEL,
) -> int | None:
    """The id of the touch credited with a conversion at ``conversion_at``, else ``None``."""
    return model.attribute(conversion_at, touches)
