"""JSON Schemas of the journey and policy files, for editors (see docs/journeys.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.journeys.model import JourneySpec, Policy

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "journey.schema.json": JourneySpec,
    "policy.schema.json": Policy,
}


def schema_of(model: type[BaseModel], title: str) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": SCHEMA_DIALECT, **schema, "title": title}


def write_schemas(out_dir: Path) -> list[Path]:
    """Write ``journey.schema.json`` and ``policy.schema.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, model in SCHEMA_FILES.items():
        title = "Recall journey" if model is JourneySpec else "Recall policy"
        path = out_dir / file_name
        text = json.dumps(schema_of(model, title), ensure_ascii=False, indent=2)
        path.write_text(text + "\n", encoding="utf-8")
        written.append(path)
    return written
