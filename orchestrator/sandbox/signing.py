"""Signing event pushes the way the WeChat and WeCom servers do, using wechatpy's own crypto.

The signature timestamp is wall time (a receiver checks freshness against its real clock);
the event's ``CreateTime`` inside the XML is business time.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from urllib.parse import urlencode

import xmltodict
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto
from wechatpy.utils import WeChatSigner

PushValue = str | int | list[str]


def push_xml(fields: Mapping[str, PushValue]) -> str:
    """Event XML as the servers write it: text in CDATA, numbers bare, lists as ``<Item>``s."""
    parts = ["<xml>"]
    for name, value in fields.items():
        parts.append(f"<{name}>{_xml_value(value)}</{name}>")
    parts.append("</xml>")
    return "".join(parts)


def _xml_value(value: PushValue) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "".join(f"<Item><![CDATA[{item}]]></Item>" for item in value)
    return f"<![CDATA[{value}]]>"


def _signature(*values: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*values)
    return str(signer.signature)


def _with_query(url: str, query: Mapping[str, str]) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(query)}"


def wechat_push(
    url: str, xml: str, *, token: str, aes_key: str | None, appid: str, openid: str
) -> tuple[str, bytes]:
    """(signed URL, body) of a WeChat OA server push, plain or safe (encrypted) mode."""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
    query = {
        "signature": _signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "openid": openid,
    }
    if not aes_key:
        return _with_query(url, query), xml.encode("utf-8")
    envelope = WeChatCrypto(token, aes_key, appid).encrypt_message(xml, nonce, timestamp)
    query["encrypt_type"] = "aes"
    query["msg_signature"] = xmltodict.parse(envelope)["xml"]["MsgSignature"]
    return _with_query(url, query), envelope.encode("utf-8")


def wecom_push(
    url: str, xml: str, *, token: str, aes_key: str | None, corp_id: str
) -> tuple[str, bytes]:
    """(signed URL, body) of a WeCom server push.

    WeCom always encrypts; with no AES key configured the sandbox sends the plain XML signed
    like a WeChat plain-mode push (``signature`` over token, timestamp, nonce) instead.
    """
    timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
    if not aes_key:
        query = {
            "signature": _signature(token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        return _with_query(url, query), xml.encode("utf-8")
    envelope = WeComCrypto(token, aes_key, corp_id).encrypt_message(xml, nonce, timestamp)
    signature = xmltodict.parse(envelope)["xml"]["MsgSignature"]
    query = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}
    return _with_query(url, query), envelope.encode("utf-8")
