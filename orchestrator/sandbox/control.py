"""The ``/_sandbox`` control API: not a provider API, the test and simulation harness's handle
on the sandbox (reset, record, faults, followers, clock, config, WeCom staff actions,
inbound SMS, flushing callbacks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.clock import as_utc
from orchestrator.sandbox.faults import FaultSpec
from orchestrator.sandbox.state import SandboxState
from orchestrator.sandbox.waker import Waker


class ClockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: datetime | None = Field(description="ISO 8601; naive means UTC; null: wall time")


class FollowersBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wechat: dict[str, Literal["followed", "unfollowed", "unknown"]] = {}
    wecom: dict[str, Literal["friend", "not_friend", "unknown"]] = {}
    twilio: dict[
        str, Literal["ok", "invalid", "opted_out", "not_mobile", "undelivered", "failed"]
    ] = {}


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    msgid: str
    userid: str | None = None


class JoinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_userid: str
    config_id: str | None = None
    chat_id: str | None = None


class InboundBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    body: str
    to: str | None = None


class ReleaseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] | None = Field(default=None, description="null: every held answer")


def control_router(state: SandboxState, waker: Waker) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])

    @router.post("/reset")
    def reset() -> dict[str, bool]:
        """Forget every call, message, task, follower state, fault, queued callback and the
        frozen clock. Config and issued tokens stay."""
        state.reset()
        return {"ok": True}

    @router.get("/record")
    def record(
        provider: Literal["wechat", "wecom", "twilio"] | None = None,
        since: int = Query(0, ge=0, description="only entries with seq > since"),
        outcome: str | None = None,
        limit: int | None = Query(None, ge=1),
    ) -> list[dict[str, Any]]:
        """Every provider call received, oldest first."""
        return state.records(provider, since=since, outcome=outcome, limit=limit)

    @router.post("/faults")
    def add_fault(spec: FaultSpec) -> dict[str, Any]:
        return state.add_fault(spec)

    @router.get("/faults")
    def list_faults() -> list[dict[str, object]]:
        with state.lock:
            return state.faults.armed()

    @router.delete("/faults")
    def clear_faults() -> dict[str, bool]:
        state.clear_faults()
        return {"ok": True}

    @router.delete("/faults/{fault_id}")
    def remove_fault(fault_id: int) -> dict[str, bool]:
        """Disarm one fault (the ``id`` its ``POST`` answered); 404 once it is used up."""
        if not state.remove_fault(fault_id):
            raise HTTPException(404, detail=f"no armed fault {fault_id} (used up or removed)")
        return {"ok": True}

    @router.get("/held")
    def held() -> list[dict[str, object]]:
        """Answers being held back now (latency, timeout, stall), with the caller's address."""
        return waker.held()

    @router.post("/held/release")
    def release(body: ReleaseBody | None = None) -> dict[str, int]:
        """Answer held calls now (the given ids, else all)."""
        ids = set(body.ids) if body is not None and body.ids is not None else None
        return {"released": waker.release(ids)}

    @router.post("/followers")
    def followers(body: FollowersBody) -> dict[str, int]:
        return state.set_followers(body.model_dump())

    @router.get("/clock")
    def get_clock() -> dict[str, str]:
        return {"now": state.now().isoformat()}

    @router.post("/clock")
    def set_clock(body: ClockBody) -> dict[str, str]:
        now = state.set_clock(as_utc(body.now) if body.now is not None else None)
        return {"now": now.isoformat()}

    @router.get("/config")
    def get_config() -> dict[str, Any]:
        return state.config.model_dump()

    @router.post("/config")
    def configure(changes: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        try:
            return state.configure(changes).model_dump()
        except ValidationError as exc:
            raise HTTPException(422, detail=exc.errors(include_url=False)) from exc

    @router.post("/wecom/confirm")
    def wecom_confirm(body: ConfirmBody) -> dict[str, Any]:
        try:
            return state.wecom_confirm(body.msgid, body.userid)
        except LookupError as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    @router.post("/wecom/join")
    def wecom_join(body: JoinBody) -> dict[str, Any]:
        try:
            return state.wecom_join(
                body.external_userid, config_id=body.config_id, chat_id=body.chat_id
            )
        except LookupError as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    @router.post("/twilio/inbound")
    def twilio_inbound(body: InboundBody) -> dict[str, Any]:
        return state.twilio_inbound(body.from_, body.body, body.to)

    @router.post("/flush")
    def flush() -> dict[str, Any]:
        """Deliver every queued callback now; answers once all were posted."""
        return state.flush()

    @router.get("/status")
    def status() -> dict[str, Any]:
        with state.lock:
            return {
                "records": len(state.record),
                "pending_callbacks": len(state.outbox),
                "now": state.now().isoformat(),
                "faults": state.faults.armed(),
                "held": waker.waiting(),
            }

    return router
