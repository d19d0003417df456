"""Rows for tracking and API tests: users, enrollments, touches, links, batches."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select

from orchestrator.store.models import Enrollment, Link, SendBatch, Touch, User

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
USERS = User.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]
TOUCHES = Touch.__table__  # type: ignore[attr-defined]
LINKS = Link.__table__  # type: ignore[attr-defined]
BATCHES = SendBatch.__table__  # type: ignore[attr-defined]


class Seeder:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def user(self, user_id: str, **fields: Any) -> str:
        with self.engine.begin() as conn:
            conn.execute(insert(USERS).values(user_id=user_id, attributes={}, **fields))
        return user_id

    def enrollment(self, user_id: str, journey_id: str = "winback", **fields: Any) -> int:
        values = {"journey_id": journey_id, "journey_version": "v1", "user_id": user_id,
                  "arm": "treatment", "state": "active", "entered_at": T0, "data": {}} | fields
        with self.engine.begin() as conn:
            return int(conn.execute(insert(ENROLLMENTS).values(**values)
                                    .returning(ENROLLMENTS.c.id)).scalar_one())

    def touch(self, enrollment_id: int, step_id: str = "sms", **fields: Any) -> int:
        with self.engine.begin() as conn:
            enrollment = conn.execute(
                select(ENROLLMENTS).where(ENROLLMENTS.c.id == enrollment_id)
            ).mappings().one()
            values = {
                "enrollment_id": enrollment_id, "journey_id": enrollment["journey_id"],
                "journey_version": "v1", "user_id": enrollment["user_id"], "step_id": step_id,
                "channel": "sms", "status": "sent", "due_at": T0, "sent_at": T0,
            } | fields
            return int(conn.execute(insert(TOUCHES).values(**values)
                                    .returning(TOUCHES.c.id)).scalar_one())

    def link(self, code: str, touch_id: int | None, target_url: str) -> str:
        with self.engine.begin() as conn:
            conn.execute(insert(LINKS).values(code=code, touch_id=touch_id,
                                              target_url=target_url, clicks=0, created_at=T0))
            if touch_id is not None:
                conn.execute(TOUCHES.update().where(TOUCHES.c.id == touch_id)
                             .values(link_code=code))
        return code

    def batch(self, batch_id: str, provider_ref: str, **fields: Any) -> str:
        values = {"id": batch_id, "channel": "wechat_article", "journey_id": "winback",
                  "step_id": "article", "state": "sent", "provider_ref": provider_ref,
                  "result": {}, "payload": {}, "created_at": T0} | fields
        with self.engine.begin() as conn:
            conn.execute(insert(BATCHES).values(**values))
        return batch_id

    def row(self, table: Any, **where: Any) -> dict[str, Any]:
        with self.engine.connect() as conn:
            query = select(table).where(*(table.c[k] == v for k, v in where.items()))
            return dict(conn.execute(query).mappings().one())

    def count(self, table: Any) -> int:
        from sqlalchemy import func

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
