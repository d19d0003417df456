"""Engine commands: import, enroll, run/worker/beat, simulate, export, send-test,
pause/resume/stop."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import console
from orchestrator.config import Settings, get_settings
from orchestrator.errors import RecallError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from orchestrator.engine.stack import Stack

err = console.stderr()
out = console.stdout()


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


def _db(settings: Settings) -> Engine:
    from orchestrator.store.db import get_engine
    from orchestrator.store.migrate import upgrade

    engine = get_engine(settings)
    upgrade(engine)
    return engine


def _now(settings: Settings) -> datetime:
    from orchestrator.store.clock import StoredClock

    return StoredClock(_db(settings)).now()


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}"),
                    TimeElapsedColumn(), console=err, transient=True)


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. "
                                 "2026-03-01T00:00:00+08:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def import_cmd(
    kind: Annotated[Literal["users", "events"], typer.Argument(help="users (CSV), events (JSONL)")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the file to import")],
    trigger: Annotated[bool, typer.Option(help="let imported events trigger journeys")] = False,
) -> None:
    """Import users.csv or events.jsonl; bad rows are listed (FILE:LINE), good rows kept."""
    from orchestrator.audience.phones import default_region, policy_timezone
    from orchestrator.engine.book import JourneyBook
    from orchestrator.engine.importer import import_events, import_users

    settings = get_settings()
    engine = _db(settings)
    now = _now(settings)
    try:
        with _progress() as bar:
            task = bar.add_task(f"importing {kind}", total=None)

            def step(n: int) -> None:
                bar.advance(task, n)

            if kind == "users":
                region = default_region(settings, policy_timezone(settings))
                report = import_users(engine, file, now=now, region=region, progress=step)
            else:
                book = None
                if trigger:
                    book = JourneyBook(settings.journeys_dir, settings.templates_dir,
                                       settings.state_dir, settings.timezone)
                    book.sync(engine, now=now)
                report = import_events(engine, file, now=now, journeys=book, progress=step)
    except (RecallError, ValueError) as exc:
        raise _fail(exc) from None
    for note in report.notes:
        err.print(f"note: {note}", soft_wrap=True, highlight=False, markup=False)
    for line, reason in report.errors:
        err.print(f"{file}:{line}: {reason}", soft_wrap=True, highlight=False, markup=False)
    out.print(f"{report.imported:,} {kind} imported, {report.duplicates:,} duplicates, "
              f"{len(report.errors):,} rejected")
    if report.errors:
        raise typer.Exit(1)


def enroll_cmd(
    journey: Annotated[str, typer.Argument(help="journey id")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, change nothing")] = False,
) -> None:
    """Enroll a journey's segment now (a manual launch)."""
    from orchestrator.engine.runner import enroll_segment
    from orchestrator.engine.runtime import Runtime

    settings = get_settings()
    try:
        rt = Runtime.from_settings(settings, db=_db(settings))
        if not dry_run:
            rt.book.sync(rt.db, now=rt.clock.now())
        result = enroll_segment(rt, rt.book.latest(journey), dry_run=dry_run)
    except RecallError as exc:
        raise _fail(exc) from None
    table = Table(title=f"{journey}{' (dry run)' if dry_run else ''}")
    for column in ("enrolled", "treatment", "control", "already active", "reentry blocked"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{n:,}" for n in (result.enrolled, result.treatment, result.control,
                                       result.already_active, result.reentry_blocked)))
    out.print(table)


def control_cmd(action: Literal["pause", "resume", "stop"]) -> Callable[[str], None]:
    def command(journey: Annotated[str, typer.Argument(help="journey id")]) -> None:
        from orchestrator.engine.control import change_state
        from orchestrator.journeys.loader import journey_ids

        settings = get_settings()
        try:
            counts = change_state(_db(settings), journey, action, now=_now(settings),
                                  defined=journey_ids(settings.journeys_dir))
        except RecallError as exc:
            raise _fail(exc) from None
        extra = ""
        if action == "stop":
            extra = (f": {counts['cancelled_touches']:,} touches cancelled, "
                     f"{counts['ended_enrollments']:,} enrollments ended")
        out.print(f"{journey}: {action} done{extra}")

    command.__doc__ = {
        "pause": "Hold a journey's due touches until resumed.",
        "resume": "Release a paused journey.",
        "stop": "Cancel a journey's unsent touches; measurement continues.",
    }[action]
    return command


def send_test_cmd(
    journey: Annotated[str, typer.Argument(help="journey id")],
    to: Annotated[str, typer.Option(
        "--to", metavar="LIST",
        help="who gets it: user ids of imported users, separated by commas (--to u1,u2), or "
             "@FILE: a file of user ids, one a line or comma-separated, # starts a comment; "
             "at most 100 people")],
) -> None:
    """Send every send step of a journey to a few people now, to check what they get.

    Each step is rendered for each person and sent through the real channel (the configured
    provider or the sandbox), now: caps and quiet hours are skipped, consent is not (an
    opted-out person is not sent to). Test sends are never counted (reports, exports, the
    dashboard) and each run is written to the audit log. Exit 1 if a send failed."""
    from orchestrator.engine.runtime import Runtime
    from orchestrator.engine.testsends import parse_recipients, send_test
    from orchestrator.logs import redact

    settings = get_settings()
    try:
        recipients = parse_recipients(to)
        rt = Runtime.from_settings(settings, db=_db(settings))
        try:
            result = send_test(rt, journey, recipients)
        finally:
            rt.close()
    except RecallError as exc:
        raise _fail(exc) from None
    # Plain aligned columns, not a rich table: piped, a table would cut its cells to 80.
    lines = [("step", "channel", "recipient", "to", "outcome")]
    for o in result.outcomes:
        why = o.reason or ""
        if o.outcome == "pending":
            why = f"{o.status}, a running worker settles it" + (f" ({why})" if why else "")
        if o.error:
            why = f"{why}: {o.error}" if why else o.error
        outcome = f"{o.outcome}: {why}" if why else o.outcome
        lines.append((o.step_id, o.channel, redact(o.user_id), o.address, outcome))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    _say(f"send-test {result.journey_id} (version {result.version})", out)
    for line in lines:
        _say("  ".join([*(cell.ljust(w) for cell, w in zip(line, widths, strict=False)),
                        line[4]]), out)
    counts = Counter(o.outcome for o in result.outcomes)
    _say(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
         + "; test sends are never counted; written to the audit log", out)
    if counts["failed"]:
        raise typer.Exit(1)


def export_cmd(
    kind: Annotated[Literal["touches", "enrollments"], typer.Argument()],
    fmt: Annotated[Literal["jsonl", "csv"], typer.Option("--format")] = "jsonl",
    journey: Annotated[str | None, typer.Option(help="only this journey")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="file (default stdout)")] = None,
) -> None:
    """Export every touch or enrollment (the rows every report number comes from)."""
    from orchestrator.reports.export import write

    settings = get_settings()
    engine = _db(settings)
    if out_file is None:
        n = write(engine, kind, sys.stdout, fmt=fmt, journey_id=journey)
    else:
        with out_file.open("w", encoding="utf-8", newline="") as fh:
            n = write(engine, kind, fh, fmt=fmt, journey_id=journey)
    err.print(f"{n:,} {kind} exported")


def simulate_cmd(
    days: Annotated[float, typer.Option(help="virtual days to run (0.5 is half a day)")],
    start: Annotated[str | None, typer.Option(
        help="virtual start time, ISO 8601 (without an offset: UTC); default: now, to the "
             "minute (give it for repeatable runs)")] = None,
    users: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="users.csv imported at the start (known users are updated; a bad row stops "
             "the run)")] = None,
    events: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="events.jsonl: events at or before --start are history, later ones are "
             "replayed as the clock reaches them")] = None,
    journeys: Annotated[Path | None, typer.Option(
        file_okay=False, exists=True,
        help="journeys folder (default: RECALL_JOURNEYS_DIR)")] = None,
    responses: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="responses.yaml: how simulated people open, click, join, convert and opt out "
             "(default: the built-in values; docs/simulate.md)")] = None,
    seed: Annotated[int, typer.Option(help="seed of every simulated response")] = 0,
) -> None:
    """Run the real stack (store, Redis, Celery worker, API, sandbox) on a virtual clock.

    Results stay in the configured database. Ctrl-C or SIGTERM stops it and everything it
    started."""
    from orchestrator.engine.lifecycle import Stopped
    from orchestrator.engine.responses import load_responses
    from orchestrator.engine.simulate import simulate

    settings = get_settings()
    if journeys is not None:
        settings = settings.model_copy(update={"journeys_dir": journeys})
    begin = _parse_time(start) if start else datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        chosen = load_responses(responses)
    except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
        raise _fail(ValueError(f"{responses}: {exc}")) from None
    try:
        with Progress(TextColumn("simulating"), BarColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("simulate", total=1.0)
            result = simulate(settings, days=days, start=begin, users=users, events=events,
                              responses=chosen, seed=seed,
                              progress=lambda f: bar.update(task, completed=f))
    except Stopped as stop:
        _say(f"simulate stopped before its end ({stop.signame}); what it did so far stays in "
             "the database")
        raise typer.Exit(stop.exit_code) from None
    except RecallError as exc:
        raise _fail(exc) from None
    sent = sum(n for s, n in result.touches.items() if s in ("sent", "delivered"))
    out.print(f"simulated {days:g} days in {result.seconds:.1f}s ({result.steps:,} clock steps): "
              f"{result.enrollments:,} enrollments, {sum(result.touches.values()):,} touches "
              f"({sent:,} sent), {result.events_replayed:,} events replayed, "
              f"{sum(result.actions.values()):,} simulated responses")
    table = Table(title="touches by status")
    table.add_column("status")
    table.add_column("n", justify="right")
    for status, n in sorted(result.touches.items()):
        table.add_row(status, f"{n:,}")
    out.print(table)


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.main", *args]


def run_cmd(port: Annotated[int, typer.Option(help="API port")] = 8000) -> None:
    """API + worker + beat on the embedded defaults (SQLite, embedded Redis, sandbox).

    Ctrl-C or SIGTERM stops everything it started. One `recall run` per state directory."""
    from orchestrator.engine.lifecycle import Stopped
    from orchestrator.engine.stack import Stack

    try:
        with Stack(get_settings(), workers=1, api_port=port, beat=True, say=_say) as stack:
            _say_running(stack)
            ended = _wait_for_a_child(stack)
            _say(f"{ended}; stopping {stack.parts()}")
    except Stopped:
        return  # asked to stop: a clean exit
    except RecallError as exc:
        raise _fail(exc) from None
    raise typer.Exit(1)


def _say(message: str, console: Console = err) -> None:
    console.print(message, soft_wrap=True, highlight=False, markup=False)


def _say_running(stack: Stack) -> None:
    from orchestrator.api.exposure import sandbox_secrets_allowed

    s = stack.settings
    sandbox = stack.sandbox.base_url if stack.sandbox else "off (real providers)"
    _say(f"Recall running: API {s.public_base_url} (dashboard /, OpenAPI /docs), sandbox "
         f"{sandbox}, state and logs in {Path(s.state_dir).resolve()}. Ctrl-C stops.")
    if s.api_key_list:
        _say(f"/v1 takes `Authorization: Bearer <key>` with one of the {len(s.api_key_list)} "
             "keys in RECALL_API_KEYS.")
        return
    opened = ("; the dashboard is open without a key on this loopback stack"
              if sandbox_secrets_allowed(s, "127.0.0.1") else "")
    _say("/v1 needs `Authorization: Bearer <key>` and RECALL_API_KEYS is empty, so every /v1 "
         "call is refused (401): set RECALL_API_KEYS=<key>[,<key>...] and restart. Webhooks, "
         f"callbacks and short links need no key{opened}.")


def _wait_for_a_child(stack: Stack) -> str:
    """Until a child process exits (SIGINT/SIGTERM end this wait with ``Stopped``)."""
    import time

    logs = {**{p.pid: f"worker-w{n + 1}.log" for n, p in enumerate(stack.workers)},
            **({stack.beat.pid: "beat.log"} if stack.beat else {})}
    while True:
        for proc in stack.children():
            if proc.poll() is not None:
                log = Path(stack.settings.state_dir).resolve() / logs[proc.pid]
                return f"pid {proc.pid} exited with code {proc.returncode} (its log: {log})"
        time.sleep(0.5)


def worker_cmd(
    concurrency: Annotated[int, typer.Option(help="worker processes")] = 1,
    queues: Annotated[Literal["all", "work", "tick"], typer.Option(
        help="what to consume: all, the work (sends, cursors, refresh, polls) or the ticks "
             "(give ticks a worker of their own so they never wait behind sends)")] = "all",
) -> None:
    """A Celery worker (one process on SQLite; many on PostgreSQL)."""
    import os

    queue = get_settings().celery_queue
    names = {"all": f"{queue},{queue}.tick", "work": queue, "tick": f"{queue}.tick"}[queues]
    os.execv(sys.executable, _celery("worker", f"--concurrency={concurrency}",
                                     "--loglevel=INFO", "-Q", names))


def beat_cmd() -> None:
    """The beat: one per deployment; it only ticks the dispatcher every second."""
    import os

    state_dir = Path(get_settings().state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    os.execv(sys.executable, _celery("beat", "--loglevel=INFO", "-s",
                                     str(state_dir / "beat-schedule")))


def forget_cmd(user: Annotated[str, typer.Argument(help="the user_id to erase")]) -> None:
    """Erase a person's personal data everywhere; anonymous counts stay (PIPL/GDPR)."""
    from redis import RedisError

    from orchestrator.store.erase import forget
    from orchestrator.store.redis import get_redis

    settings = get_settings()
    try:
        redis = get_redis(settings)
    except RecallError:
        redis = None  # no Redis runs (the embedded one keeps nothing once stopped)
    try:
        erasure = forget(_db(settings), user, now=_now(settings), redis=redis)
    except RedisError as exc:
        raise _fail(RuntimeError(f"Redis did not answer ({exc}); nothing was erased: "
                                 "run `recall forget` again when it does")) from None
    except RecallError as exc:
        raise _fail(exc) from None
    changed = ", ".join(f"{n:,} {table}" for table, n in erasure.rows.items() if n)
    out.print(f"forgotten: now {erasure.pseudonym} ({changed}); written to the audit log")


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)
    app.command("enroll")(enroll_cmd)
    app.command("simulate")(simulate_cmd)
    app.command("export")(export_cmd)
    app.command("send-test")(send_test_cmd)
    app.command("forget")(forget_cmd)
    app.command("run")(run_cmd)
    app.command("worker")(worker_cmd)
    app.command("beat")(beat_cmd)
    for action in ("pause", "resume", "stop"):
        app.command(action)(control_cmd(action))
