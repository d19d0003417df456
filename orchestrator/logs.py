"""Logs without personal data: phone numbers, OpenIDs and message texts are masked in every
log record this process creates, ours and the libraries' alike (uvicorn's access log,
httpx, twilio, wechatpy, celery).

``configure_logging()`` installs a log-record factory, so masking happens once, when a
record is made, whatever handler or formatter later writes it. What is masked (``redact``):

- phone numbers: E.164 (``+8613800138000``) and Chinese mobiles with or without ``86`` and
  separators (``138-0013-8000``) become ``+86*******8000`` / ``*******8000`` (last 4 kept);
- WeChat/WeCom identities by shape (28-character OpenIDs/UnionIDs, ``wm…``/``wo…``
  external_userids) and by name in ``key=value``, JSON, Python-repr and XML forms
  (``openid``, ``unionid``, ``external_userid``, ``touser``, ``FromUserName``, ``To``,
  ``From``, ``phone``…): ``o6_b***``;
- message texts by name (``Body``, ``text``, ``content``, ``title``, ``description``,
  ``nickname``…): ``[masked 42 chars]``;
- credentials in URLs (``access_token``, ``secret``, ``corpsecret``).

It also quiets the per-request loggers of the Twilio SDK (every request URL and header at
INFO) and of httpx (every request line at INFO). SQL errors never carry their bound values:
every engine is made with ``hide_parameters=True`` (``orchestrator.store.db``).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable
from typing import Any

# User ids are pseudonymous keys of our own (operators need them to debug): not masked.
_ID_KEYS = (
    "openid", "unionid", "external_userid", "touser", "fromusername", "to", "from", "phone",
    "mobile", "phone_number",
)
_TEXT_KEYS = ("body", "text", "content", "title", "description", "digest", "nickname")
_SECRET_KEYS = ("access_token", "secret", "corpsecret", "auth_token", "password", "sign")
_KEYS = "|".join(sorted({*_ID_KEYS, *_TEXT_KEYS, *_SECRET_KEYS}, key=len, reverse=True))

_QUERY = re.compile(rf"(?i)(?<![\w-])({_KEYS})=([^&\s\"'<>,;)]+)")
_QUOTED = re.compile(rf"""(?i)(["'])({_KEYS})\1(\s*[:=]\s*)(["'])((?:\\.|(?!\4).)*)\4""")
_QUOTED_LIST = re.compile(rf"""(?i)(["'])({_KEYS})\1(\s*:\s*)\[([^\]]*)\]""")
_XML = re.compile(rf"(?i)<({_KEYS})>(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))</\1>", re.DOTALL)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ -]?)?(?:\(?\d{2,4}\)?[ -])?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"
    r"|(?<![\w+])\+\d{7,15}(?!\d)"
    r"|(?<![\w+])(?:0086|86)1[3-9]\d{9}(?!\d)"
)
_OPENID = re.compile(r"(?<![\w-])(?:o[\w-]{27}|w[mo][\w-]{20,40})(?![\w-])")


def mask_phone(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    keep = digits[-4:]
    prefix = "+" if value.strip().startswith("+") else ""
    country = digits[:2] if prefix and digits.startswith("86") else ""
    return f"{prefix}{country}{'*' * max(3, len(digits) - len(country) - 4)}{keep}"


def mask_id(value: str) -> str:
    return f"{value[:4]}***" if len(value) > 8 else "***"


def mask_text(value: str) -> str:
    return f"[masked {len(value)} chars]"


def _mask_value(key: str, value: str) -> str:
    name = key.lower()
    if not value:
        return value
    if name in _SECRET_KEYS:
        return "***"
    if name in _TEXT_KEYS:
        return mask_text(value)
    if name in ("to", "from", "phone", "mobile", "phone_number") and re.search(r"\d{5}", value):
        return mask_phone(value)
    return mask_id(value)


def redact(text: str) -> str:
    """``text`` with phone numbers, identities, message texts and credentials masked."""
    if not text:
        return text
    text = _XML.sub(lambda m: f"<{m[1]}>{_mask_value(m[1], m[2] or m[3] or '')}</{m[1]}>",
                    text)
    text = _QUOTED_LIST.sub(lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}[{_mask_list(m[2], m[4])}]",
                            text)
    text = _QUOTED.sub(
        lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}{m[4]}{_mask_value(m[2], m[5])}{m[4]}", text)
    text = _QUERY.sub(lambda m: f"{m[1]}={_mask_value(m[1], m[2])}", text)
    text = _PHONE.sub(lambda m: mask_phone(m[0]), text)
    return _OPENID.sub(lambda m: mask_id(m[0]), text)


def _mask_list(key: str, items: str) -> str:
    return re.sub(r"""(["'])((?:\\.|(?!\1).)*)\1""",
                  lambda m: f"{m[1]}{_mask_value(key, m[2])}{m[1]}", items)


def _mask_arg(arg: Any) -> Any:
    if arg is None or isinstance(arg, int | float | bool):
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    masked = redact(text)
    return arg if masked == text else masked


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask the record's message, arguments and traceback in place (structure kept, so
    formatters that read ``record.args``, like uvicorn's access log, still work)."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    elif record.msg is not None and not isinstance(record.msg, int | float):
        record.msg = redact(str(record.msg))
    if isinstance(record.args, tuple):
        record.args = tuple(_mask_arg(a) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: _mask_arg(v) for k, v in record.args.items()}
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        formatted = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact(formatted)
    return record


_installed = False
_install_lock = threading.Lock()
# Per-request lines at INFO: the Twilio SDK's client (URL and headers of every request) and
# httpx's ("HTTP Request: POST …"), one or more per SMS at the INFO level workers log at.
QUIET_LOGGERS = {"twilio.http_client": logging.WARNING, "httpx": logging.WARNING}


def configure_logging() -> None:
    """Mask personal data in every log record of this process (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return mask_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
        _installed = True
