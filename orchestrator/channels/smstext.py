"""SMS text arithmetic shared by the SMS adapter, the sandbox, preview and cost reports.

GSM-7 text: 160 chars single, 153 per part. Anything else (Chinese) is UCS-2:
70 chars single, 67 per part. Characters outside the BMP count as two UCS-2 units.

Twilio takes a ``Body`` of at most 1,600 characters and counts a character that needs more
room (an emoji, a GSM-7 extension such as ``€``) as more than one: we count the units the
carrier is sent (``encoded_length``), the stricter of the readings its pages allow.
"""

from __future__ import annotations

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")
MAX_BODY_UNITS = 1600  # Twilio's Body limit (error 21617)


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def encoded_length(text: str) -> int:
    """Length in the units the carrier counts: septets for GSM-7, UTF-16 units for UCS-2."""
    if is_gsm7(text):
        return sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
    return len(text.encode("utf-16-le")) // 2


def body_too_long(text: str) -> int | None:
    """The body's length in carrier units when Twilio would refuse it (21617), else None."""
    n = encoded_length(text)
    return n if n > MAX_BODY_UNITS else None


def count_segments(text: str) -> int:
    """How many SMS parts (billed units) ``text`` takes; 0 for empty text."""
    if not text:
        return 0
    n = encoded_length(text)
    single, part = (160, 153) if is_gsm7(text) else (70, 67)
    return 1 if n <= single else -(-n // part)


def sms_with_link(text: str, link: str | None, *, signature: str = "",
                  opt_out_suffix: str = "") -> str:
    """The text sent: rendered text, the touch's short link (appended when the text does not
    carry it), signature and opt-out suffix (kept out of the URL a phone will linkify)."""
    text = text.strip()
    if link and link not in text:
        text = f"{text} {link}"
    if opt_out_suffix and not text.endswith(opt_out_suffix) and link and text.endswith(link):
        opt_out_suffix = " " + opt_out_suffix
    return compose_sms(text, signature=signature, opt_out_suffix=opt_out_suffix)


def compose_sms(text: str, *, signature: str = "", opt_out_suffix: str = "") -> str:
    """The final SMS body: registered signature first, opt-out suffix last (China rules)."""
    body = text.strip()
    if signature and not body.startswith(signature):
        body = signature + body
    if opt_out_suffix and not body.endswith(opt_out_suffix):
        body = body + opt_out_suffix
    return body
