"""``recall preview`` shows an SMS exactly as it is sent: the same body the adapter gives
Twilio (signature, text, the touch's short link where the engine puts it, opt-out suffix),
judged against the sandbox's own record of the real send. Only the short link's code differs:
it is new for each touch, and the preview shows a sample of the same length."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.preview import PREVIEW_CODE, preview_journey
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.tracking.links import new_code
from tests.engine.conftest import T0

JOURNEY = """\
id: nudge
name: 短信提醒
entry:
  segment: "True"
goal: {{ event: order_placed, within: 7d }}
reentry: 7d
steps:
  - id: sms
    send: sms
    template: n/sms.j2
{extra}"""

CASES = {
    # the template places the short link
    "link-in-text": ('    link: "https://m.example.com/c?u={{ user_id }}"\n',
                     "送你一张5元券 {{ link }} 三天有效"),
    # the template leaves it out: the adapter appends it
    "link-appended": ('    link: "https://m.example.com/c?u={{ user_id }}"\n',
                      "送你一张5元券，三天有效"),
    # a fixed landing page, placed by the template
    "landing-in-text": ("    landing: https://m.example.com/welcome\n",
                        "新店上线 {{ link }}"),
    # a fixed landing page the template does not place: nothing is appended
    "landing-unused": ("    landing: https://m.example.com/welcome\n", "新店上线，欢迎回来"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_preview_of_an_sms_is_the_body_twilio_gets(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, case: str
) -> None:
    extra, template = CASES[case]
    rt = make_runtime(journeys={"nudge": JOURNEY.format(extra=extra)},
                      templates={"n/sms.j2": template}, users=2)
    journey = rt.book.latest("nudge")
    with rt.db.begin() as conn:
        enroll(conn, journey, ["u0000", "u0001"], now=T0)
    run_until_idle(rt)
    (sent,) = [r["body"]["Body"] for r in sandbox.state.records("twilio")
               if r["path"].endswith("/Messages.json") and r["method"] == "POST"
               and r["body"]["To"] == "+8613800000001"]

    user = {"user_id": "u0001", "phone": "+8613800000001", "nickname": "同学1",
            "attributes": {}}
    (preview,) = preview_journey(journey, rt.book.policy_for(journey), user,
                                 templates_dir=rt.book.templates_dir_for(journey),
                                 now=T0, public_base_url=rt.settings.public_base_url)
    codes = re.findall(r"/s/([\w-]+)", sent)
    assert len(PREVIEW_CODE) == len(new_code())
    shown = preview.sms_text or ""
    assert (shown.replace(PREVIEW_CODE, codes[0]) if codes else shown) == sent
    assert preview.segments is not None and preview.cost is not None
    if "link" in case:
        assert preview.link_target == "https://m.example.com/c?u=u0001"
    else:
        assert "/s/" not in sent and preview.link_target is None
