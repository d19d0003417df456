"""What WeChat accepts as an article cover, checked the same way by ``recall validate``, the
``wechat_article`` adapter and the sandbox (it lives here, light to import, because validation
needs it without loading the provider SDKs).

An article's cover is a *thumb* material: a JPG of at most 64 KB (WeChat's material pages:
"缩略图（thumb）：64KB，支持JPG格式"). The docs do not say whether a KB is 1,000 or 1,024
bytes; we take the stricter 64,000, so a cover Recall accepts is one WeChat cannot refuse for
its size. The format is read from the bytes (Pillow), never from the file name.
"""

from __future__ import annotations

import hashlib
from io import BytesIO

from PIL import Image, UnidentifiedImageError

THUMB_MAX_BYTES = 64_000
THUMB_FORMAT = "JPEG"


def image_format(data: bytes) -> str | None:
    """Pillow's name for the image format of ``data`` (``"JPEG"``, ``"PNG"``…), or ``None``
    when the bytes are not a readable image."""
    try:
        with Image.open(BytesIO(data)) as image:
            kind = image.format
            image.verify()  # reads the structure: a truncated or corrupt file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return kind


def thumb_problem(data: bytes) -> str | None:
    """Why WeChat would refuse ``data`` as an article cover, or ``None`` if it is fine."""
    if not data:
        return "the file is empty"
    kind = image_format(data)
    if kind is None:
        return "the file is not a readable image; WeChat takes a JPG cover"
    if kind != THUMB_FORMAT:
        return f"the file is a {kind} image, not a JPG; WeChat takes JPG covers only: convert it"
    if len(data) > THUMB_MAX_BYTES:
        return (
            f"the file is {len(data):,} bytes; WeChat takes a cover of at most 64 KB "
            f"({THUMB_MAX_BYTES:,} bytes): shrink or recompress it"
        )
    return None


def digest(data: bytes) -> str:
    """The content key of a cover: the same JPG is uploaded once, whatever uses it."""
    return hashlib.sha256(data).hexdigest()[:32]
