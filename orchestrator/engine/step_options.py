"""What a send step tells its channel besides the rendered text: the article's cover, digest,
author and fixed landing link, the invite's link card. They travel in the frozen batch
(``SendRequest.options``), so a retry sends exactly what the first attempt would have sent.

The cover goes as the picture's bytes (base64), not as a path: the batch may be delivered by
a worker on another machine, and an old journey version's cover lives only in its stored
snapshot. A cover is at most 64 KB, and there is one batch per up to 10,000 recipients.
"""

from __future__ import annotations

import base64
from pathlib import Path

from orchestrator.journeys.model import SendStep

COVER_OPTION = "cover_jpeg_b64"


def step_options(step: SendStep, templates_dir: Path) -> dict[str, str]:
    """The channel options ``step`` adds; ``templates_dir`` holds its version's covers."""
    options: dict[str, str] = {}
    if step.cover:
        data = (templates_dir / step.cover).read_bytes()
        options[COVER_OPTION] = base64.b64encode(data).decode("ascii")
        options["cover_name"] = step.cover
    if step.landing and step.send == "wechat_article":
        options["link"] = step.landing  # the article's "read more": the fixed landing page
    for key in ("digest", "author"):
        value = getattr(step, key)
        if value:
            options[key] = value
    if step.card is not None:
        for key in ("title", "desc", "picurl"):
            value = getattr(step.card, key)
            if value:
                options[f"link_{key}"] = value
    return options
