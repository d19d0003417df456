"""Loading journeys and the policy; every problem is a ``Problem`` at ``FILE:LINE:COL``.

A journeys folder holds ``policy.yaml`` (the policy) and journey files (every other
``*.yaml``/``*.yml`` directly inside it). A file is checked in two passes: its structure
(YAML syntax, keys, types, values) and then, once that is right, the whole-journey checks
of ``checks.py`` (steps, branches, templates, pools, caps). All problems of all files are
collected before anything is raised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import JourneyError, NotFoundError, Problem
from orchestrator.journeys.checks import journey_problems
from orchestrator.journeys.model import Journey, JourneySpec, Policy
from orchestrator.journeys.modes import send_modes
from orchestrator.journeys.suggest import did_you_mean
from orchestrator.journeys.templates import TemplateCatalog
from orchestrator.journeys.yamldoc import YamlDocument, read_yaml, validation_problems

M = TypeVar("M", bound=BaseModel)
POLICY_FILE = "policy.yaml"
JOURNEY_SUFFIXES = (".yaml", ".yml")


@dataclass
class ValidationReport:
    """The outcome of checking some paths: problems (errors and warnings) and what loaded."""

    problems: list[Problem] = field(default_factory=list)
    journeys: list[Journey] = field(default_factory=list)
    policies: dict[Path, Policy] = field(default_factory=dict)
    templates: list[Path] = field(default_factory=list)
    journey_files: list[Path] = field(default_factory=list)  # checked, valid or not
    policy_files: list[Path] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)  # how each send step is sent, one a line

    @property
    def errors(self) -> list[Problem]:
        return sorted(p for p in set(self.problems) if p.severity == "error")

    @property
    def warnings(self) -> list[Problem]:
        return sorted(p for p in set(self.problems) if p.severity != "error")

    def summary(self) -> str:
        """``"3 journeys, 1 policy, 9 templates: valid"``: every file checked, valid or not,
        with how many of each are invalid, then the error and warning counts."""
        bad = {p.file for p in self.errors}
        counts = [
            _counted(self.journey_files, bad, "journey", "journeys"),
            _counted(self.policy_files, bad, "policy", "policies"),
            _counted(self.templates, bad, "template", "templates"),
        ]
        verdict = ["invalid" if self.errors else "valid"]
        if self.errors:
            verdict.append(_plural(len(self.errors), "error", "errors"))
        if self.warnings:
            verdict.append(_plural(len(self.warnings), "warning", "warnings"))
        return f"{', '.join(counts)}: {', '.join(verdict)}"


def _counted(files: list[Path], bad: set[str], one: str, many: str) -> str:
    invalid = sum(str(f) in bad for f in files)
    return _plural(len(files), one, many) + (f" ({invalid} invalid)" if invalid else "")


def load_policy(path: Path) -> Policy:
    """The policy in ``path``; ``JourneyError`` with every problem of the file."""
    policy, problems = _policy_file(path)
    _raise_errors(problems)
    assert policy is not None
    return policy


def load_journey(path: Path, policy: Policy, templates_dir: Path) -> Journey:
    """The journey in ``path``, checked against ``policy`` and the templates."""
    doc_journey = _journey_file(path, policy, TemplateCatalog(templates_dir))
    _raise_errors(doc_journey.problems)
    assert doc_journey.journey is not None
    return doc_journey.journey


def load_all(journeys_dir: Path, templates_dir: Path) -> tuple[list[Journey], Policy]:
    """Every journey of ``journeys_dir`` and its ``policy.yaml``; ``JourneyError`` listing
    every problem of the run if anything is wrong."""
    report = check_paths([journeys_dir], templates_dir)
    _raise_errors(report.problems)
    return report.journeys, report.policies[Path(journeys_dir)]


def validate_paths(paths: Iterable[Path], templates_dir: Path) -> list[Problem]:
    """Every problem (errors and warnings) in the given files and folders, sorted."""
    report = check_paths(paths, templates_dir)
    return sorted(set(report.problems))


def find_journey(
    journeys_dir: Path, journey_id: str, templates_dir: Path
) -> tuple[Journey, Policy]:
    """The journey with ``journey_id`` (or at that path) and the policy beside it."""
    candidate = Path(journey_id)
    if candidate.suffix in JOURNEY_SUFFIXES and candidate.is_file():
        policy = load_policy(candidate.parent / POLICY_FILE)
        return load_journey(candidate, policy, templates_dir), policy
    ids = journey_ids(journeys_dir)
    if journey_id not in ids:
        raise NotFoundError(
            f"no journey {journey_id!r} in {journeys_dir}{did_you_mean(journey_id, ids)}; "
            f"journeys: {', '.join(sorted(ids)) or 'none'}"
        )
    policy = load_policy(journeys_dir / POLICY_FILE)
    return load_journey(ids[journey_id], policy, templates_dir), policy


def journey_ids(journeys_dir: Path) -> dict[str, Path]:
    """The id of every journey file in ``journeys_dir`` that has one (valid or not)."""
    ids = {}
    for path in _journey_files(journeys_dir) if journeys_dir.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            ids[data["id"]] = path
    return ids


def check_paths(paths: Iterable[Path], templates_dir: Path) -> ValidationReport:
    """Check journey files and folders (a folder: its policy and journeys) in one run."""
    run = _Run(ValidationReport(), TemplateCatalog(templates_dir))
    for path in run.journey_paths([Path(p) for p in paths]):
        run.add_journey(path)
    run.report.templates = run.catalog.files
    return run.report


# ---------------------------------------------------------------- files


@dataclass
class _Loaded:
    doc: YamlDocument | None
    journey: Journey | None
    problems: list[Problem]


@dataclass
class _Run:
    """One validation run: shared template catalog, one policy per folder, unique ids."""

    report: ValidationReport
    catalog: TemplateCatalog
    policies: dict[Path, Policy | None] = field(default_factory=dict)
    id_files: dict[str, str] = field(default_factory=dict)

    def journey_paths(self, paths: list[Path]) -> Iterator[Path]:
        seen: set[Path] = set()
        for path in paths:
            if path.is_dir():
                self.policy_of(path)
                files = _journey_files(path)
            elif path.is_file():
                self.policy_of(path.parent)
                files = [] if path.name == POLICY_FILE else [path]
            else:
                self.report.problems.append(Problem(str(path), 1, 1, "no such file or folder"))
                files = []
            for file in files:
                if file.resolve() not in seen:
                    seen.add(file.resolve())
                    yield file

    def policy_of(self, folder: Path) -> Policy | None:
        if folder not in self.policies:
            if (folder / POLICY_FILE).is_file():
                self.report.policy_files.append(folder / POLICY_FILE)
            policy, problems = _policy_file(folder / POLICY_FILE)
            self.report.problems += problems
            self.policies[folder] = policy
            if policy is not None:
                self.report.policies[folder] = policy
        return self.policies[folder]

    def add_journey(self, path: Path) -> None:
        self.report.journey_files.append(path)
        loaded = _journey_file(path, self.policy_of(path.parent), self.catalog)
        self.report.problems += loaded.problems
        journey = loaded.journey
        if journey is None or loaded.doc is None:
            return
        if journey.id in self.id_files:
            message = f"duplicate journey id {journey.id!r}: {self.id_files[journey.id]} has it too"
            self.report.problems.append(loaded.doc.problem(("id",), message))
            return
        self.id_files[journey.id] = journey.source_path
        self.report.journeys.append(journey)
        self.report.modes += [f"{path}: {m.describe()}" for m in send_modes(journey, self.catalog)]


def _journey_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in JOURNEY_SUFFIXES and p.stem != "policy"
    )


def _policy_file(path: Path) -> tuple[Policy | None, list[Problem]]:
    if not path.is_file():
        message = f"no {POLICY_FILE} in {path.parent}: journeys are checked against the policy"
        return None, [Problem(str(path), 1, 1, message)]
    _, doc, problems = _read(path)
    if doc is None:
        return None, problems
    policy = _validate(Policy, doc, problems)
    return (policy if not _has_errors(problems) else None), problems


def _journey_file(path: Path, policy: Policy | None, catalog: TemplateCatalog) -> _Loaded:
    raw, doc, problems = _read(path)
    spec = _validate(JourneySpec, doc, problems) if doc is not None else None
    if spec is None or doc is None:
        return _Loaded(doc, None, problems)
    problems += journey_problems(spec, doc, policy, catalog)
    if _has_errors(problems):
        return _Loaded(doc, None, problems)
    templates = catalog.closure(spec.templates_used())
    covers = spec.covers_used()
    digest = hashlib.sha256(raw)
    for template in templates:
        digest.update(template.data)
    for cover in covers:
        digest.update((catalog.templates_dir / cover).read_bytes())
    journey = Journey.model_validate(
        {
            **doc.data,
            "version": digest.hexdigest()[:16],
            "source_path": str(path),
            "template_files": [t.name for t in templates],
        }
    )
    return _Loaded(doc, journey, problems)


def _read(path: Path) -> tuple[bytes, YamlDocument | None, list[Problem]]:
    """The file's bytes (they make the version) and its YAML with positions."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        return b"", None, [Problem(str(path), 1, 1, f"cannot read the file: {exc.strerror}")]
    except UnicodeDecodeError as exc:
        return b"", None, [Problem(str(path), 1, 1, f"not UTF-8 text (byte {exc.start})")]
    doc, problems = read_yaml(text, str(path))
    if doc is not None and not isinstance(doc.data, dict):
        problems.append(doc.problem((), "expected a mapping of keys at the top of the file"))
        return raw, None, problems
    return raw, doc, problems


def _validate(model: type[M], doc: YamlDocument, problems: list[Problem]) -> M | None:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        problems += validation_problems(exc, doc, model)
        return None


def _has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _raise_errors(problems: list[Problem]) -> None:
    errors = [p for p in set(problems) if p.severity == "error"]
    if errors:
        raise JourneyError(errors)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
