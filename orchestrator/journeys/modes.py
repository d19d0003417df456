"""How each send step reaches its recipients: shared, per recipient, or by fixed-link landing.

A WeChat mass send and a WeCom task carry one text for all their recipients, so a step's
mode follows from what its content depends on (its templates and whatever they include,
and its link):

- ``shared``: nothing personal. One article (mass send) or one WeCom task per staff member
  carries the same content to everybody.
- ``landing``: nothing personal, and a fixed ``landing`` URL as ``{{ link }}``: shared as
  above; the landing page identifies the visitor and reports the click (``/l/…``).
- ``per_recipient``: user data (``user``, ``user_id``, users.csv columns, ``event``, a
  pool's code) or a per-touch short ``link``. Each recipient's own content goes by a call
  of its own (WeChat template message, one WeCom task per customer). SMS is always sent one
  message at a time.

At send time the engine groups recipients by their rendered content, so recipients whose
personal content comes out identical still share a call; nobody ever gets another's.
``recall validate`` prints one line per send step from ``describe``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.journeys.expressions import USER_COLUMNS
from orchestrator.journeys.model import JourneySpec, SendStep
from orchestrator.journeys.templates import TemplateCatalog

Mode = Literal["shared", "per_recipient", "landing"]
# Template data whose value differs per user (pools are added per journey).
PERSONAL_NAMES = frozenset({"user_id", *USER_COLUMNS, "user", "attributes", "event"})


@dataclass(frozen=True)
class SendMode:
    """The mode of one send step and what decided it."""

    step_id: str
    channel: str
    mode: Mode
    personal: tuple[str, ...] = ()  # what makes the content personal, e.g. ("link", "user")
    landing: str | None = None

    def describe(self) -> str:
        """``step 'article' (wechat_article): shared mass send: …``"""
        return f"step {self.step_id!r} ({self.channel}): {self._how()}"

    def _how(self) -> str:
        uses = f"its content uses {', '.join(self.personal)}"
        if self.channel == "sms":
            fixed = f", with the fixed link {self.landing}" if self.landing else ""
            return f"per-recipient: one SMS each{fixed}"
        article = self.channel == "wechat_article"
        if self.mode == "per_recipient":
            if article:
                return (f"per-recipient: each recipient's own article by template message "
                        f"({uses}); recipients whose article comes out identical share a "
                        "mass send")
            return (f"per-recipient: one WeCom task per customer, each confirmed by its staff "
                    f"member ({uses}); customers whose text comes out identical share a task")
        what = ("one article for every recipient" if article
                else "one WeCom task per staff member, the same text for every customer")
        if self.mode == "landing":
            return (f"fixed-link landing: {what}, linking to {self.landing}; the landing page "
                    "identifies the reader")
        lone = " (a lone recipient gets it by template message)" if article else ""
        return f"shared {'mass send' if article else 'task'}: {what}{lone}"


def send_mode(spec: JourneySpec, step: SendStep, catalog: TemplateCatalog) -> SendMode:
    """The mode of ``step`` of journey ``spec``, its templates read from ``catalog``."""
    personal = PERSONAL_NAMES | set(spec.pools)
    used: set[str] = set()
    for info in catalog.closure(step.templates()):
        used |= set(info.variables)
    reasons = (("link",) if step.link else ()) + tuple(sorted(used & personal))
    mode: Mode = "shared"
    if reasons or step.send == "sms":
        mode = "per_recipient"
    elif step.landing:
        mode = "landing"
    return SendMode(step.id, step.send, mode, reasons, step.landing)


def send_modes(spec: JourneySpec, catalog: TemplateCatalog) -> list[SendMode]:
    """The mode of every send step of ``spec``, in step order."""
    return [send_mode(spec, step, catalog) for step in spec.steps if isinstance(step, SendStep)]
