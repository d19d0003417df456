"""Telling a failing run's findings in full, so they can be reconstructed: per batch (which
batches lost or doubled what, and what the provider saw of them) and per finding (the
touch row, its batch row, every provider call naming the person)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from orchestrator.chaos.count import Finding
from orchestrator.chaos.evidence import send_channel

Row = Mapping[str, Any]
Address = Callable[[str, str], str]  # (user_id, step_id) -> the provider's address


class Evidence:
    """The store's rows and the provider's record, indexed for lookups by person."""

    def __init__(self, touches: Iterable[Row], batches: Iterable[Row],
                 record: Iterable[Row], steps: Mapping[str, str], address: Address) -> None:
        self.steps = steps
        self.address = address
        self.touches: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for t in touches:
            self.touches[(str(t["user_id"]), str(t["step_id"]))].append(t)
        self.batches = {str(b["id"]): {k: v for k, v in b.items() if k != "payload"}
                        for b in batches}
        self.calls: dict[str, list[Row]] = defaultdict(list)
        for entry in record:
            body = entry.get("body") or {}
            for to in {*(entry.get("recipients") or []), body.get("To")}:
                if to:
                    self.calls[str(to)].append(entry)

    def calls_for(self, user_id: str, step_id: str) -> list[Row]:
        """Provider calls naming the person on the step's channel (sends and look-ups)."""
        channel = self.steps[step_id]
        return [e for e in self.calls.get(self.address(user_id, step_id), [])
                if send_channel(e) in (None, channel)]

    def story(self, finding: Finding) -> dict[str, Any]:
        assert finding.user_id is not None and finding.step_id is not None
        rows = self.touches.get((finding.user_id, finding.step_id), [])
        batch_ids = sorted({str(t["batch_id"]) for t in rows if t.get("batch_id")})
        return {
            "finding": {"count": finding.count, "user_id": finding.user_id,
                        "step_id": finding.step_id, "detail": finding.detail, "n": finding.n},
            "touches": [dict(t) for t in rows],
            "batches": [self.batches[b] for b in batch_ids if b in self.batches],
            "provider_calls": [_brief(e) for e in self.calls_for(finding.user_id,
                                                                  finding.step_id)],
        }

    def by_batch(self, findings: Sequence[Finding]) -> list[dict[str, Any]]:
        """Findings grouped by the batch of their touch, most findings first."""
        groups: dict[str, dict[str, Any]] = {}
        for f in findings:
            if f.user_id is None or f.step_id is None:
                continue
            rows = self.touches.get((f.user_id, f.step_id), [])
            batch = next((str(t["batch_id"]) for t in rows if t.get("batch_id")), "(none)")
            group = groups.setdefault(batch, {
                "batch": self.batches.get(batch, {"id": batch}), "step_id": f.step_id,
                "findings": Counter(), "store": Counter(), "provider": Counter()})
            group["findings"][f.count] += f.n
            group["store"][", ".join(f"{t['status']}/{t['reason'] or '-'}" for t in rows)
                           or "no touch"] += 1
            for call in self.calls_for(f.user_id, f.step_id):
                what = f"{call['method']} {call['outcome']}"
                group["provider"][what + (f" ({call['fault']})" if call.get("fault") else "")] += 1
        return sorted(groups.values(), key=lambda g: -sum(g["findings"].values()))


def _brief(entry: Row) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("seq", "at", "method", "path", "outcome", "fault", "ref")}
