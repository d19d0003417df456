"""``recall preview``: every send step of a journey rendered for one user, before any send.

The user comes from a users CSV (documented format; works without a database) or, when the
store is available, from the database.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.channels.smstext import count_segments, sms_with_link
from orchestrator.clock import utcnow
from orchestrator.errors import InputError, NotFoundError
from orchestrator.journeys.assign import arm_for, variant_for
from orchestrator.journeys.expressions import USER_COLUMNS
from orchestrator.journeys.model import Journey, Policy
from orchestrator.journeys.pools import read_codes
from orchestrator.journeys.render import (
    RenderedTouch,
    render_link,
    render_touch,
    template_context,
)
from orchestrator.tracking.links import new_code, short_url

USERS_CSV_COLUMNS = ("user_id", *USER_COLUMNS, "sms_opt_out", "wechat_followed")
_BOOLEAN_COLUMNS = ("sms_opt_out", "wechat_followed")
_TRUE = {"1", "true", "yes", "y", "t"}
# A step's link is shortened at send time to a code of its own per touch: the preview shows a
# code of the same length (so an SMS counts the same segments), not the long target.
PREVIEW_CODE = ("preview" + "0" * 32)[: len(new_code())]


@dataclass(frozen=True)
class TouchPreview:
    step_id: str
    touch: RenderedTouch  # ``link``: the short link (a sample code), or the fixed landing
    sms_text: str | None = None  # the SMS as sent: signature + text + link + opt-out suffix
    segments: int | None = None
    cost: float | None = None
    link_target: str | None = None  # where the short link leads (a step's ``link:``)


def read_user_csv(path: Path, user_id: str) -> dict[str, Any]:
    """The row of ``user_id`` in a users.csv: columns as fields, extra columns as attributes.

    Empty cells are ``None`` (unknown); ``sms_opt_out``/``wechat_followed`` become booleans.
    """
    if not path.is_file():
        raise InputError(f"users file {path} not found", field="--users")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "user_id" not in (reader.fieldnames or []):
            raise InputError(f"users file {path} has no user_id column", field="--users")
        for row in reader:
            if row.get("user_id") == user_id:
                return _user_from_row(row)
    raise NotFoundError(f"user {user_id!r} is not in {path}")


def _user_from_row(row: Mapping[str, str | None]) -> dict[str, Any]:
    user: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for column, raw in row.items():
        value = raw.strip() if isinstance(raw, str) and raw.strip() else None
        if column in _BOOLEAN_COLUMNS:
            user[column] = None if value is None else value.lower() in _TRUE
        elif column in USERS_CSV_COLUMNS:
            user[column] = value
        elif column:
            attributes[column] = value
    user["attributes"] = attributes
    return user


def read_user_from_store(user_id: str) -> dict[str, Any]:
    """The user (and derived profile fields) from the database, if the store is there."""
    try:
        from orchestrator.store.db import session_scope
        from orchestrator.store.models import User, UserFeatures
    except ImportError as exc:
        raise InputError(
            f"no --users file given and the user store is not available ({exc}); "
            "pass --users users.csv",
            field="--users",
        ) from exc
    try:
        with session_scope() as session:
            user = session.get(User, user_id)
            features = session.get(UserFeatures, user_id)
            if user is None:
                raise NotFoundError(
                    f"user {user_id!r} is not in the database; pass --users users.csv"
                )
            fields = user.model_dump(exclude={"erased", "created_at", "updated_at"})
            if features is not None:
                fields.update(features.model_dump(exclude={"user_id", "computed_at", "features"}))
                fields["features"] = dict(features.features)
            return fields
    except NotFoundError:
        raise
    except Exception as exc:  # the database may not exist or be migrated yet
        raise InputError(
            f"cannot read user {user_id!r} from the database ({exc.__class__.__name__}: "
            f"{exc}); pass --users users.csv",
            field="--users",
        ) from exc


def sample_pools(journey: Journey) -> dict[str, str]:
    """The first code of each pool: what a preview shows where the engine draws one."""
    return {name: read_codes(journey.pool_path(name))[0] for name in journey.pools}


def preview_journey(
    journey: Journey,
    policy: Policy,
    user: Mapping[str, Any],
    *,
    templates_dir: Path,
    event_props: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    public_base_url: str = "http://127.0.0.1:8000",
) -> list[TouchPreview]:
    """Render every send step of ``journey`` for ``user`` (the treatment content), as the
    engine renders it: a step's ``link`` becomes a short link under ``public_base_url``
    (with a sample code), and an SMS is the body the adapter sends."""
    event = None
    if journey.entry.event:
        event = {
            "name": journey.entry.event,
            "props": dict(event_props or {}),
            "ts": (now or utcnow()).isoformat(),
            "value": None,
        }
    arm = arm_for(journey.id, user["user_id"], journey.holdout)
    pools = sample_pools(journey)
    previews = []
    for step in journey.send_steps():
        variant = variant_for(journey.id, step, user["user_id"])
        context = template_context(
            journey, user=user, arm=arm, variant=variant, event=event, pools=pools
        )
        target = render_link(step, context)
        if target:
            context = {**context, "link": short_url(public_base_url, PREVIEW_CODE)}
        touch = render_touch(
            journey, step, variant=variant, context=context, templates_dir=templates_dir
        )
        previews.append(_with_sms_cost(step.id, touch, policy, target))
    return previews


def _with_sms_cost(step_id: str, touch: RenderedTouch, policy: Policy,
                   target: str | None) -> TouchPreview:
    if touch.channel != "sms":
        return TouchPreview(step_id, touch, link_target=target)
    # The adapter appends the touch's short link when the text lacks it; a fixed landing URL
    # is only where the template puts {{ link }}.
    text = sms_with_link(touch.text, touch.link if target else None,
                         signature=policy.sms.signature,
                         opt_out_suffix=policy.sms.opt_out_suffix)
    segments = count_segments(text)
    return TouchPreview(step_id, touch, text, segments, segments * policy.sms.price_per_segment,
                        link_target=target)
