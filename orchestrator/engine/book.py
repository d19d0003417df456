"""The journeys the engine runs: the current files, and every version an enrollment holds.

A journey's version is the hash of its file and templates; an enrollment keeps the version
it entered with. ``sync`` stores each version's files (``journey_versions``) so that a
version whose files have since changed is rebuilt from the store, not from the folder.
"""

from __future__ import annotations

import base64
import logging
import stat
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.errors import NotFoundError
from orchestrator.journeys.loader import (
    JOURNEY_SUFFIXES,
    load_all,
    load_journey,
    load_policy,
)
from orchestrator.journeys.model import Journey, Policy
from orchestrator.store.db import begin_write
from orchestrator.store.tables import JOURNEY_STATES as STATES
from orchestrator.store.tables import JOURNEY_VERSIONS as VERSIONS

log = logging.getLogger(__name__)
# Files changed this recently may change again within the same mtime tick, unseen by the
# fingerprint (the "racy git" problem): while any is this fresh, a check loads again.
RACY_NS = 2_000_000_000
FileStamp = tuple[str, int, int, int]  # path, mtime_ns, size, inode


def upsert(engine: Engine) -> Any:
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


class JourneyBook:
    def __init__(self, journeys_dir: Path, templates_dir: Path, state_dir: Path,
                 default_timezone: str | None = None) -> None:
        self.default_timezone = default_timezone  # RECALL_TIMEZONE
        self.journeys_dir = journeys_dir
        self.templates_dir = templates_dir
        self.state_dir = state_dir
        self.reload()

    synced = False  # set once this process has recorded the current journeys

    def reload(self) -> None:
        # Stamped before reading: an edit made during the load shows up at the next check.
        self._stamps, self._racy = self._scan()
        self._reload_error: str | None = None
        journeys, policy = load_all(self.journeys_dir, self.templates_dir)
        policy = self._with_default_timezone(policy)
        self.policy: Policy = policy
        self.current: dict[str, Journey] = {j.id: j for j in journeys}
        self._versions: dict[tuple[str, str], Journey] = {(j.id, j.version): j for j in journeys}
        self._policies: dict[tuple[str, str], Policy] = {}
        self._template_dirs: dict[tuple[str, str], Path] = {}

    def reload_if_changed(self) -> bool:
        """Load the folders again if a journey file, the policy or a template changed since
        the last load (a cheap check: names, mtimes, sizes and inodes; no file is read).

        Returns True when the journeys or the policy now differ: the caller then ``sync``s
        the new versions. A broken edit is logged and the last good journeys stay in use
        (nothing raises); it is not retried until the files change again.
        """
        stamps, _ = self._scan()
        if stamps == self._stamps and not self._racy:
            return False
        before, known_error = self._loaded(), self._reload_error
        try:
            self.reload()
        except Exception as exc:  # whatever a bad edit breaks, the engine keeps running
            if str(exc) != known_error:  # once per problem, not at every tick
                log.error("journeys not reloaded, still running the last good ones: %s", exc)
            self._reload_error = str(exc)
            return False
        changed = self._loaded() != before
        if changed:
            log.info("journeys reloaded: %s", ", ".join(f"{i}@{v}" for i, v in self._loaded()[0]))
        return changed

    def _loaded(self) -> tuple[list[tuple[str, str]], Policy]:
        return sorted((j.id, j.version) for j in self.current.values()), self.policy

    def _scan(self) -> tuple[tuple[FileStamp, ...], bool]:
        """Stamps of the journey files (what the loader reads) and of every template file;
        and whether any of them is too fresh to trust its stamp."""
        files: list[Path] = []
        if self.journeys_dir.is_dir():
            files += [p for p in self.journeys_dir.iterdir() if p.suffix in JOURNEY_SUFFIXES]
        if self.templates_dir.is_dir():
            files += self.templates_dir.rglob("*")
        stamps = []
        for path in files:
            try:
                st = path.stat()
            except FileNotFoundError:  # removed while scanning: the next check sees it
                continue
            if stat.S_ISREG(st.st_mode):
                stamps.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        racy = any(time.time_ns() - mtime < RACY_NS for _, mtime, _, _ in stamps)
        return tuple(sorted(stamps)), racy

    def _with_default_timezone(self, policy: Policy) -> Policy:
        """A policy that names no timezone takes ``RECALL_TIMEZONE`` (the user's
        zone, else the policy's, else the setting)."""
        if self.default_timezone and "timezone" not in policy.model_fields_set:
            return policy.model_copy(update={"timezone": self.default_timezone})
        return policy

    def policy_for(self, journey: Journey) -> Policy:
        """The policy with the journey's own (stricter) settings applied."""
        key = (journey.id, journey.version)
        if key not in self._policies:
            self._policies[key] = self.policy.tightened_by(journey.policy)
        return self._policies[key]

    def journeys(self) -> list[Journey]:
        return list(self.current.values())

    def latest(self, journey_id: str) -> Journey:
        try:
            return self.current[journey_id]
        except KeyError:
            known = ", ".join(sorted(self.current)) or "none"
            raise NotFoundError(
                f"no journey {journey_id!r} in {self.journeys_dir}; known journeys: {known}"
            ) from None

    def get(self, engine: Engine, journey_id: str, version: str) -> Journey:
        journey = self._versions.get((journey_id, version))
        if journey is None:
            journey = self._versions[(journey_id, version)] = self._rebuild(
                engine, journey_id, version
            )
        return journey

    def sync(self, engine: Engine, *, now: datetime) -> None:
        """Record every current journey (its state row and its version's files)."""
        self.synced = True
        insert = upsert(engine)
        with begin_write(engine) as conn:
            for j in self.current.values():
                self._store_version(conn, j, now)
                conn.execute(
                    insert(STATES)
                    .values(journey_id=j.id, version=j.version, state="active",
                            priority=j.priority, updated_at=now)
                    .on_conflict_do_update(
                        index_elements=["journey_id"],
                        set_={"version": j.version, "priority": j.priority},
                    )
                )

    def record_version(self, engine: Engine, journey: Journey, *, now: datetime) -> None:
        """Store one version's files without touching any journey's state: a test send of a
        journey not launched yet must not launch it (a state row lets its schedule run)."""
        with begin_write(engine) as conn:
            self._store_version(conn, journey, now)

    def _store_version(self, conn: Connection, journey: Journey, now: datetime) -> None:
        conn.execute(
            upsert(conn.engine)(VERSIONS)
            .values(journey_id=journey.id, version=journey.version,
                    source=self._source(journey), created_at=now)
            .on_conflict_do_nothing()
        )

    def _source(self, journey: Journey) -> dict[str, Any]:
        path = Path(journey.source_path)
        templates = {
            name: (self.templates_dir / name).read_text(encoding="utf-8")
            for name in journey.templates_used()
        }
        pools = {
            name: {"csv": pool.csv, "text": (path.parent / pool.csv).read_text(encoding="utf-8")}
            for name, pool in journey.pools.items()
        }
        covers = {  # pictures are bytes: stored as base64 beside the texts
            name: base64.b64encode((self.templates_dir / name).read_bytes()).decode("ascii")
            for name in journey.covers_used()
        }
        return {
            "file": path.name,
            "journey": path.read_text(encoding="utf-8"),
            "templates": templates,
            "pools": pools,
            "covers": covers,
        }

    def _rebuild(self, engine: Engine, journey_id: str, version: str) -> Journey:
        with engine.connect() as conn:
            source = conn.execute(
                select(VERSIONS.c.source).where(
                    VERSIONS.c.journey_id == journey_id, VERSIONS.c.version == version
                )
            ).scalar()
        if source is None:
            raise NotFoundError(f"journey {journey_id!r} has no stored version {version!r}")
        root = self.state_dir / "versions" / journey_id / version
        journey_file = root / "journeys" / source["file"]
        journey_file.parent.mkdir(parents=True, exist_ok=True)
        journey_file.write_text(source["journey"], encoding="utf-8")
        for name, text in source["templates"].items():
            target = root / "templates" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        for name, encoded in source.get("covers", {}).items():
            target = root / "templates" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(encoded))
        for pool in source["pools"].values():
            target = journey_file.parent / pool["csv"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(pool["text"], encoding="utf-8")
        policy = self._with_default_timezone(load_policy(self.journeys_dir / "policy.yaml"))
        self._template_dirs[(journey_id, version)] = root / "templates"
        return load_journey(journey_file, policy, root / "templates")

    def templates_dir_for(self, journey: Journey) -> Path:
        """Where this version's templates are: the live folder for current versions, the
        stored snapshot for older ones (an enrollment keeps the copy it entered with)."""
        return self._template_dirs.get((journey.id, journey.version), self.templates_dir)
