"""Reading the sandbox's record and the exports into the counting's values; the schedule;
finding the process behind a connection."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

from orchestrator.chaos.count import ProviderRefusal
from orchestrator.chaos.evidence import json_lines, provider_view, store_touches
from orchestrator.chaos.plan import Options, schedule
from orchestrator.chaos.services import owner_of_connection

AT = "2026-03-02T02:00:00+00:00"
SMS = "/2010-04-01/Accounts/AC1/Messages.json"
MASS = "/cgi-bin/message/mass/send"


def entry(seq: int, provider: str, method: str, path: str, outcome: str = "accepted",
          recipients: list[str] | None = None, **extra: object) -> dict[str, object]:
    return {"seq": seq, "provider": provider, "method": method, "path": path, "at": AT,
            "outcome": outcome, "recipients": recipients or [], "excluded": {}, "ref": None,
            "fault": None, "body": {}, **extra}


def test_the_record_yields_sends_refusals_and_faults() -> None:
    record = [
        entry(1, "wechat", "GET", "/cgi-bin/token"),
        entry(2, "wechat", "POST", MASS, recipients=["oA", "oB", "oC"], ref="m1",
              excluded={"oC": "quota"}),
        entry(3, "wechat", "POST", MASS, "duplicate", ["oA", "oB"]),  # 45065: not sent again
        entry(4, "twilio", "POST", SMS, recipients=["+1"], ref="SM1", fault="timeout"),
        entry(5, "twilio", "POST", SMS, "fault:stall", ["+2"]),
        entry(6, "twilio", "POST", SMS, "error:21211", ["+3"]),
        entry(7, "twilio", "POST", SMS, "fault:rate_limit", ["+4"]),
        entry(8, "twilio", "GET", SMS, fault="drop"),  # a look-up: no send
        entry(9, "wecom", "POST", "/cgi-bin/externalcontact/add_msg_template",
              recipients=["wm1"], ref="msg1"),
    ]
    view = provider_view(record, calm_from=6)
    assert [(s.channel, s.recipient, s.seq, s.ref) for s in view.sends] == [
        ("wechat_article", "oA", 2, "m1"), ("wechat_article", "oB", 2, "m1"),
        ("sms", "+1", 4, "SM1"), ("wecom_group_invite", "wm1", 9, "msg1")]
    assert view.sends[0].at == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    assert view.refusals == [ProviderRefusal("wechat_article", "oC", 2, "quota"),
                             ProviderRefusal("sms", "+3", 6, "error:21211")]
    assert view.faults == {"timeout": 1, "stall": 1, "rate_limit": 1, "drop": 1}
    assert (view.calls, view.send_calls, view.stormy_calls) == (9, 7, 6)


def test_export_rows_become_store_touches() -> None:
    text = ('{"enrollment_id": 4, "user_id": "u1", "arm": "treatment", "step_id": "sms", '
            '"channel": "sms", "status": "failed", "reason": "unknown_outcome", '
            '"provider_message_id": ""}\n\n')
    [touch] = store_touches(json_lines(text))
    assert (touch.enrollment_id, touch.reason, touch.provider_message_id) == (
        4, "unknown_outcome", None)


def test_the_schedule_holds_every_fault_and_is_fixed_by_its_seed() -> None:
    options = Options.quick()
    actions = schedule(options)
    kinds = [a.kind for a in actions]
    assert kinds.count("wave") == options.waves
    assert kinds.count("kill") == options.kills and kinds.count("aimed_kill") == 3
    assert kinds.count("redis_restart") == 1
    assert kinds.index("beat2_start") < kinds.index("redis_restart") < kinds.index("beat2_stop")
    assert actions == sorted(actions) and all(0 <= a.at <= options.chaos_s for a in actions)
    assert schedule(options) == actions
    assert schedule(Options.quick(seed=2)) != actions


def test_the_process_behind_a_connection_is_found() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            local, remote = client.getsockname()[1], server.getsockname()[1]
            assert owner_of_connection(local, remote, [os.getpid()]) == os.getpid()
            assert owner_of_connection(local, remote, [1]) is None  # not among the candidates
        finally:
            client.close()
            accepted.close()


def test_the_chaos_journey_and_policy_are_valid() -> None:
    from orchestrator.chaos.run import check_journey

    check_journey()  # raises, naming FILE:LINE:COL, when a rule of the language changes
