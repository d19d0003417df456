"""WeChat Official Account material: pictures and articles, temporary and permanent, drafts.

Rules, as WeChat documents them (docs/sandbox.md cites each page):

- ``media/upload?type=`` (temporary, kept **3 days** of business time, then 40007) and
  ``material/add_material?type=`` (permanent): ``type`` is image, voice, video or thumb
  (40004); the form field ``media`` is required (41005); a thumb is a **JPG of at most
  64 KB** (40005 other format, 40012 too big), an image a PNG/JPEG/GIF (permanent also BMP)
  of at most 2 MB (40005 / 40009). The format is read from the bytes, not the file name.
- ``media/uploadnews``: 1..8 articles, each with ``title``, ``content`` (44003 when empty)
  and ``thumb_media_id``, the media id of a live *temporary* thumb (40007 otherwise — an
  article without a cover is refused). The news is temporary (3 days).
- ``draft/add``: 1..8 articles; ``title`` ≤ 32 characters (45003), ``author`` ≤ 16 (45110),
  ``digest`` ≤ 128 (45004), ``content`` non-empty (44003), under 20,000 characters and 1 MB
  (45002), ``content_source_url`` ≤ 1 KB (45005), ``thumb_media_id`` a *permanent* thumb or
  image (40007). A draft that is mass-sent leaves the draft box: it can be sent once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.sandbox.calls import Call, Outcome, ProviderError, require, typed

if TYPE_CHECKING:
    from orchestrator.sandbox.state import SandboxState

TEMPORARY_S = 3 * 86_400
MEDIA_TYPES = ("image", "voice", "video", "thumb")
MAX_ARTICLES = 8
THUMB_MAX_BYTES = 64_000  # "64KB": the stricter reading of a KB
IMAGE_MAX_BYTES = 2 * 1024 * 1024  # the pages say 2 MB and 10 MB: the stricter one
VOICE_MAX_BYTES = 2 * 1024 * 1024
VIDEO_MAX_BYTES = 10 * 1024 * 1024
# (allowed formats, size limit, code for a wrong size) per type. Formats are Pillow's names
# for pictures, file-name extensions for sound and video (the sandbox does not decode those).
UPLOAD_RULES: dict[str, tuple[frozenset[str], int, int]] = {
    "thumb": (frozenset({"JPEG"}), THUMB_MAX_BYTES, 40012),
    "image": (frozenset({"JPEG", "PNG", "GIF"}), IMAGE_MAX_BYTES, 40009),
    "voice": (frozenset({"amr", "mp3"}), VOICE_MAX_BYTES, 40010),
    "video": (frozenset({"mp4"}), VIDEO_MAX_BYTES, 40011),
}
PERMANENT_IMAGE_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP"})
DRAFT_LIMITS = (  # field, limit, unit, errcode, errmsg
    ("title", 32, "chars", 45003, "title size out of limit"),
    ("author", 16, "chars", 45110, "author size out of limit"),
    ("digest", 128, "chars", 45004, "description size out of limit"),
    ("content", 19_999, "chars", 45002, "content size out of limit"),
    ("content", 999_999, "bytes", 45002, "content size out of limit"),
    ("content_source_url", 1_000, "bytes", 45005, "url size out of limit"),
)


@dataclass(slots=True)
class Media:
    """One stored material. ``kind``: image, voice, video, thumb, news or draft."""

    media_id: str
    kind: str
    permanent: bool
    created_at: int  # business unix seconds
    sent: bool = False  # a draft that a mass send used up


class MediaLibrary:
    """The account's material, temporary and permanent."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self.items: dict[str, Media] = {}

    def reset(self) -> None:
        self.items.clear()

    # -- lookups --------------------------------------------------------------------------

    def live(self, media_id: Any, *kinds: str, permanent: bool | None = None) -> Media | None:
        """The material ``media_id`` if it exists, has not expired and is of ``kinds``."""
        item = self.items.get(media_id) if isinstance(media_id, str) else None
        if item is None or item.kind not in kinds:
            return None
        if permanent is not None and item.permanent != permanent:
            return None
        if not item.permanent and self._state.unix_now() >= item.created_at + TEMPORARY_S:
            return None
        return item

    def sendable(self, media_id: Any) -> Media | None:
        """An article a mass send may use: live news, or a draft not sent yet."""
        item = self.live(media_id, "news", "draft")
        return None if item is None or item.sent else item

    # -- uploads --------------------------------------------------------------------------

    def upload(self, call: Call, *, permanent: bool) -> Outcome:
        media_type = call.query.get("type", "")
        require(media_type in MEDIA_TYPES, 40004, f"invalid media type {media_type!r}")
        upload = call.body
        require(upload.get("filename") is not None, 41005, "media data missing")
        require(int(upload.get("size") or 0) > 0, 44001, "empty media data")
        _check_file(media_type, upload, permanent=permanent)
        item = self._store(media_type, permanent=permanent)
        if permanent:
            payload: dict[str, Any] = {"media_id": item.media_id}
            if media_type == "image":
                payload["url"] = f"http://mmbiz.qpic.cn/sandbox/{item.media_id}/0"
            return Outcome(payload, ref=item.media_id)
        payload = {"type": media_type, "media_id": item.media_id, "created_at": item.created_at}
        if media_type == "thumb":
            payload["thumb_media_id"] = item.media_id
        return Outcome(payload, ref=item.media_id)

    def upload_news(self, call: Call) -> Outcome:
        """``media/uploadnews``: a temporary article whose covers are temporary thumbs."""
        for index, article in enumerate(_articles(call.body)):
            _require_text(article, index)
            require(
                self.live(article.get("thumb_media_id"), "thumb", permanent=False) is not None,
                40007,
                f"invalid media_id: articles[{index}].thumb_media_id must be a temporary thumb",
            )
        item = self._store("news", permanent=False)
        return Outcome(
            {"type": "news", "media_id": item.media_id, "created_at": item.created_at},
            ref=item.media_id,
        )

    def add_draft(self, call: Call) -> Outcome:
        """``draft/add``: permanent until mass-sent; covers are permanent thumbs or images."""
        for index, article in enumerate(_articles(call.body)):
            require(
                article.get("article_type", "news") == "news",
                47001,
                f"data format error: articles[{index}].article_type (the sandbox keeps news)",
            )
            _require_text(article, index)
            _check_draft_limits(article)
            require(
                self.live(article.get("thumb_media_id"), "thumb", "image", permanent=True)
                is not None,
                40007,
                f"invalid media_id: articles[{index}].thumb_media_id must be a permanent "
                "thumb or image",
            )
        item = self._store("draft", permanent=True)
        return Outcome({"media_id": item.media_id}, ref=item.media_id)

    def upload_image(self, call: Call) -> Outcome:
        """``media/uploadimg``: a picture for inside an article (JPG/PNG under 1 MB)."""
        upload = call.body
        require(upload.get("filename") is not None, 41005, "media data missing")
        require(int(upload.get("size") or 0) > 0, 44001, "empty media data")
        require(upload.get("format") in ("JPEG", "PNG"), 40005, "invalid file type")
        require(int(upload["size"]) < 1024 * 1024, 40009, "invalid image size")
        n = self._state.next_id("media", 1)
        return Outcome({"url": f"http://mmbiz.qpic.cn/sandbox/{self._state.prefix}/{n}/0"})

    def _store(self, kind: str, *, permanent: bool) -> Media:
        serial = self._state.next_id("media", 1)
        media_id = f"sbx-{kind}-{self._state.prefix}-{serial}"
        item = Media(media_id, kind, permanent, self._state.unix_now())
        self.items[media_id] = item
        return item


def _articles(body: dict[str, Any]) -> list[dict[str, Any]]:
    articles = typed(body.get("articles"), list, 44003, "empty news data")
    require(
        0 < len(articles) <= MAX_ARTICLES,
        44003 if not articles else 45008,
        "empty news data" if not articles else f"article size out of limit (1..{MAX_ARTICLES})",
    )
    for index, article in enumerate(articles):
        require(isinstance(article, dict), 47001, f"data format error: articles[{index}]")
    return articles


def _require_text(article: dict[str, Any], index: int) -> None:
    for key in ("title", "content"):
        value = article.get(key)
        require(
            isinstance(value, str) and bool(value.strip()),
            44003,
            f"empty news data: articles[{index}].{key} is required",
        )


def _check_draft_limits(article: dict[str, Any]) -> None:
    for key, limit, unit, code, message in DRAFT_LIMITS:
        value = article.get(key) or ""
        require(isinstance(value, str), 47001, f"data format error: {key} must be a string")
        size = len(value) if unit == "chars" else len(value.encode("utf-8"))
        require(size <= limit, code, f"{message} ({key}: {size} {unit}, at most {limit})")


def _check_file(media_type: str, upload: dict[str, Any], *, permanent: bool) -> None:
    formats, limit, size_code = UPLOAD_RULES[media_type]
    if permanent and media_type == "image":
        formats = PERMANENT_IMAGE_FORMATS
    if media_type in ("thumb", "image"):
        kind = upload.get("format")
    else:
        kind = str(upload.get("filename") or "").rsplit(".", 1)[-1].lower()
    if kind not in formats:
        raise ProviderError(
            40005, f"invalid file type: a {media_type} must be {'/'.join(sorted(formats))}"
        )
    require(int(upload["size"]) <= limit, size_code, f"invalid {media_type} size")
