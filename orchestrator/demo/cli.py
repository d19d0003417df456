"""``recall demo [--users N] [--days D] [--seed S]``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from orchestrator.errors import RecallError

REPORT = Path("reports/demo.html")
PLAIN_EVERY_S = 5.0  # a piped or logged run says where it is at least this often


class PhaseDisplay:
    """The demo's phases on stderr: a progress bar on a terminal; on a pipe or a log, one
    plain line per phase and, during a long phase, one line every few seconds."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console, transient=True)
        self.task: TaskID | None = None
        self.name = ""
        self.began = self.last_line = 0.0

    def __enter__(self) -> PhaseDisplay:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live:
            self.progress.stop()

    def start(self, name: str) -> None:
        self.name, self.began = name, time.monotonic()
        self.last_line = self.began
        if self.live:
            self.task = self.progress.add_task(name, total=1.0, detail="")
        else:
            self._line(f"{name} …")

    def update(self, fraction: float, detail: str) -> None:
        if self.live and self.task is not None:
            self.progress.update(self.task, completed=fraction, detail=detail)
        elif time.monotonic() - self.last_line >= PLAIN_EVERY_S:
            self.last_line = time.monotonic()
            self._line(f"{self.name}: {fraction:.0%}, {detail} "
                       f"({self.last_line - self.began:.0f}s)")

    def done(self, summary: str) -> None:
        seconds = time.monotonic() - self.began
        if self.live and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self._line(f"{self.name} ({seconds:.1f}s): {summary}")

    def _line(self, text: str) -> None:
        self.console.print(f"demo: {escape(text)}", highlight=False, soft_wrap=True)


@contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The run's log records go to ``path`` (the phases say what happens); errors are
    printed too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="w", encoding="utf-8"),
                                       logging.StreamHandler()]
    handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers[1].setLevel(logging.ERROR)
    level = root.level
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def demo_cmd(
    users: Annotated[int, typer.Option(help="students in the synthetic campus")] = 2_000,
    days: Annotated[int, typer.Option(help="virtual days to simulate")] = 14,
    seed: Annotated[int, typer.Option(help="the same seed gives the same run")] = 7,
) -> None:
    """The whole product on a synthetic campus: population with history, import, churn
    model, tiers, the journeys in the journeys folder run for DAYS virtual days on the real
    stack (payment failures replayed as they happen), then the story here and in
    reports/demo.html. Providers with a *_API_BASE set are used as given; the others get
    the built-in sandbox. Everything stays in STATE_DIR/demo, emptied at each run."""
    from orchestrator.config import get_settings
    from orchestrator.demo.run import DemoOptions, run_demo
    from orchestrator.demo.story import tell, write_html

    err = Console(stderr=True)
    out = Console(width=None if Console().is_terminal else 150)
    began = time.monotonic()
    settings = get_settings()
    try:
        with _logs_to(settings.state_dir / "demo.log"), PhaseDisplay(err) as phases:
            result = run_demo(settings, DemoOptions(users=users, days=days, seed=seed),
                              phases)
    except RecallError as exc:
        err.print(f"recall demo: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    tell(result, out)
    write_html(result, REPORT)
    state = result.settings.state_dir
    out.print(f"\nwritten: {REPORT} · the run's data: {result.root} · its log: "
              f"{settings.state_dir / 'demo.log'} · took "
              f"{time.monotonic() - began:.1f}s\nlook closer: RECALL_STATE_DIR={state} recall "
              f"report {result.reports[0]['journey_id'] if result.reports else 'JOURNEY'} "
              f"(or export touches|enrollments, audit)", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
