"""One chaos run, from empty servers to the verdict.

1. **Prepare**: an empty ``redis-server`` on a free port, a fresh PostgreSQL database, a
   population (``users.csv``), the sandbox (``recall sandbox``, WeCom tasks auto-confirmed),
   ``recall worker`` processes and one ``recall beat``, all configured by environment.
2. **Chaos** for ``Options.chaos_s``: users arrive in waves (``recall import events
   --trigger``) while the sandbox disturbs ``fault_rate`` of all provider calls, workers
   are SIGKILLed (at random, and aimed at a call the sandbox holds), Redis is restarted
   empty once and a second beat runs through the middle; every tenth person who has had all
   three touches is nudged (``chaos-nudge``: the caps must refuse it). Then the faults go on
   until every treatment enrollment's last touch is on its way (``Options.storm_max_s``).
3. **Settle**: the faults stop; the run waits (bounded) until no treatment enrollment is
   active and no touch is waiting, claimed, sending or unknown.
4. **Count**: the sandbox's record, ``recall export touches|enrollments`` and ``recall
   audit``, joined with the users (``orchestrator.chaos.count``).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import httpx
import sqlalchemy as sa

from orchestrator.chaos.count import Expectation, Person, Tally, tally
from orchestrator.chaos.diagnose import Evidence
from orchestrator.chaos.evidence import (
    ProviderView,
    json_lines,
    provider_view,
    store_enrollments,
    store_touches,
)
from orchestrator.chaos.plan import Action, Options, schedule
from orchestrator.chaos.services import (
    Database,
    RedisServer,
    Service,
    owner_of_connection,
    wait_until,
)
from orchestrator.engine.stack import free_port, wait_for_port

PACKAGE = Path(__file__).parent
JOURNEY = "chaos-winback"
STEPS = {"article": "wechat_article", "invite": "wecom_group_invite", "sms": "sms"}
LAST_STEP = "sms"
NUDGE = "nudge"  # the step of chaos-nudge.yaml: the caps must refuse every one
NUDGE_ONE_IN = 10  # every 10th person is nudged once they had all three touches...
NUDGE_EVERY_S = 5.0  # ...looked for this often while the faults last
SEND_PATHS = ("/message/mass/send", "/externalcontact/add_msg_template", "/Messages.json")
SENDERS = ("staff-a", "staff-b", "staff-c")
# How the disturbed share of calls splits between kinds (they add up to 1).
FAULT_MIX = {"http_500": 0.25, "busy": 0.15, "rate_limit": 0.2, "timeout": 0.15,
             "stall": 0.15, "drop": 0.1}
HELD_S = 20.0  # timeout/stall answers are held past the clients' 15 s read timeout
AIM_WAIT_S = 20.0  # how long an aimed kill waits for a send to arrive at the sandbox
RESPAWN_S = 2.0  # a killed worker is replaced after this long
STORIES = 200  # findings told in full in stories.jsonl
READY = {"worker": "ready.", "beat": "beat: Starting..."}
READY_S = 180.0


def log(message: str) -> None:
    print(f"[chaos {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass
class Aim:
    """An aimed kill waiting for a send to be held: the faults holding it, what to kill."""

    fault_ids: set[int]
    kind: str
    whole_worker: bool
    deadline: float


@dataclass
class Weather:
    """What the run did to the system, for the report."""

    kills: Counter[str] = field(default_factory=Counter)
    redis_restarts: int = 0
    second_beat_s: float = 0.0
    unplanned_exits: int = 0
    waves: int = 0
    nudged: int = 0


class ChaosRun:
    def __init__(self, options: Options, workdir: Path, postgres_admin_url: str,
                 redis_binary: str, keep_db: bool = False) -> None:
        self.options = options
        self.keep_db = keep_db
        self.dir = workdir
        self.rng = random.Random(options.seed)
        self.redis = RedisServer(redis_binary, workdir / "redis")
        self.db = Database(postgres_admin_url, f"recall_chaos_{os.getpid()}_{int(time.time())}")
        self.sandbox_port = free_port()
        self.sandbox: httpx.Client | None = None
        self.workers: list[Service] = []
        self.beats: list[Service] = []
        self.imports: list[Service] = []
        self.weather = Weather()
        self.people: list[Person] = []
        self._exit = ExitStack()
        self._respawn: list[float] = []  # when to replace a killed worker
        self._aims: list[Aim] = []
        self.calm_from = 0  # the first record entry after the faults stopped
        self._beat2_since: float | None = None
        self._nudged: set[str] = set()
        self._next_nudge = 0.0
        self._watch_engine: sa.Engine | None = None

    # --- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> ChaosRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def env(self, state: str = "state") -> dict[str, str]:
        """The deployment's settings, and nothing inherited that could point elsewhere."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
        base = f"http://127.0.0.1:{self.sandbox_port}"
        env.update({
            "RECALL_DATABASE_URL": self.db.url,
            "RECALL_REDIS_URL": self.redis.url,
            "RECALL_STATE_DIR": str(self.dir / state),
            "RECALL_JOURNEYS_DIR": str(PACKAGE / "journeys"),
            "RECALL_TEMPLATES_DIR": str(PACKAGE / "templates"),
            "RECALL_WECHAT_API_BASE": base,
            "RECALL_WECOM_API_BASE": base,
            "RECALL_TWILIO_API_BASE": base,
            "RECALL_CLAIM_LEASE_S": str(self.options.lease_s),
            "RECALL_GATHER_WINDOW_S": "3",
            "RECALL_CELERY_QUEUE": f"chaos-{self.db.name}",
            "RECALL_WECOM_DEFAULT_SENDER": SENDERS[0],
        })
        return env

    def recall(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``recall`` command against the run's deployment."""
        [done] = self.recall_all([list(args)], check=check)
        return done

    def recall_all(self, commands: list[list[str]], check: bool = True
                   ) -> list[subprocess.CompletedProcess[str]]:
        """Run ``recall`` commands side by side (each start takes seconds here)."""
        procs = [subprocess.Popen([*_recall(), *args], env=self.env(), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for args in commands]
        done = []
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=600)
            if check and proc.returncode != 0:
                raise RuntimeError(f"recall {' '.join(args)} failed ({proc.returncode}):\n"
                                   f"{out}{err}")
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
        return done

    # --- 1. prepare -------------------------------------------------------------------
    def prepare(self) -> None:
        check_journey()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        self._exit.callback(self.redis.stop)
        self.db.create()
        if self.keep_db:
            log(f"the database is kept: {self.db.url}")
        else:
            self._exit.callback(self.db.drop)
        self._write_population()
        self._migrate()
        # Everything boots side by side: each process start takes seconds on a busy machine.
        self._exit.callback(self._stop_processes)
        users = self._service("users", ["import", "users", str(self.dir / "users.csv")])
        self.imports.append(users.start())
        self._start_sandbox()
        for n in range(self.options.workers):
            self._start_worker(n)
        self.beats.append(self._service("beat1", ["beat"], state="beat1").start())
        self._check_imports()
        self._wait_ready([*self.workers, *self.beats])
        log(f"ready: {self.options.users:,} users, {len(self.workers)} workers, redis "
            f"{self.redis.url}, database {self.db.name}, sandbox :{self.sandbox_port}")

    def _migrate(self) -> None:
        from orchestrator.store.migrate import upgrade

        engine = _engine(self.db.url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()

    def _wait_ready(self, services: list[Service]) -> None:
        """Until each worker says ``ready.`` and each beat ``Starting...`` (a loaded machine
        takes tens of seconds), so the chaos meets a running system."""
        def ready() -> bool:
            return all(s.log.exists() and READY[s.name.rstrip("0123456789")] in
                       s.log.read_text(errors="replace") for s in services)

        if not wait_until(ready, READY_S, every_s=0.5):
            raise RuntimeError(f"not ready within {READY_S:.0f}s: see the logs in {self.dir}")

    def _stop_processes(self) -> None:
        for service in [*self.workers, *self.beats, *self.imports]:
            service.kill()  # the run is over: nothing of theirs needs a clean exit

    def _write_population(self) -> None:
        waves = self.options.waves
        with (self.dir / "users.csv").open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["user_id", "openid", "unionid", "external_userid", "wecom_sender",
                          "phone", "timezone", "sms_opt_out", "wechat_followed"])
            for i in range(self.options.users):
                person = Person(f"c{i:06d}", f"oCHAOS{i:022d}", f"wmCHAOS{i:06d}",
                                f"+86139{i:08d}")
                self.people.append(person)
                out.writerow([person.user_id, person.openid, "", person.external_userid,
                              SENDERS[i % len(SENDERS)], person.phone, "", "false", "true"])
        for wave in range(waves):
            with (self.dir / f"wave-{wave}.jsonl").open("w") as fh:
                for person in self.people[wave::waves]:
                    fh.write(json.dumps({"event_id": f"lapsed-{person.user_id}",
                                         "user_id": person.user_id, "name": "lapsed",
                                         "ts": datetime.now(UTC).isoformat(), "value": None,
                                         "props": {}}) + "\n")

    def _start_sandbox(self) -> None:
        service = self._service("sandbox", ["sandbox", "--port", str(self.sandbox_port)])
        service.start()
        self._exit.callback(service.kill)
        wait_for_port(self.sandbox_port, timeout_s=30)
        self.sandbox = httpx.Client(base_url=f"http://127.0.0.1:{self.sandbox_port}",
                                    trust_env=False, timeout=60)
        self._exit.callback(self.sandbox.close)
        self._control("POST", "/_sandbox/config", json={"wecom_auto_confirm": True})

    def _service(self, name: str, args: list[str], state: str = "state") -> Service:
        return Service(name, [*_recall(), *args], self.env(state), self.dir / f"{name}.log")

    def _start_worker(self, n: int) -> None:
        args = ["worker", "--concurrency", str(self.options.concurrency)]
        self.workers.append(self._service(f"worker{n}", args).start())

    def _control(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.sandbox is not None
        answer = self.sandbox.request(method, path, **kwargs)
        answer.raise_for_status()
        return answer.json()

    # --- 2. chaos ---------------------------------------------------------------------
    def chaos(self) -> None:
        self._arm_weather()
        began = time.monotonic()
        for action in schedule(self.options):
            self._idle_until(began + action.at)
            self._do(action)
        self._idle_until(began + self.options.chaos_s)
        if self._beat2_since is not None:
            self._do(Action(0, "beat2_stop"))
        self._check_imports()
        self._storm_until_last_step()

    def _storm_until_last_step(self) -> None:
        """Keep the faults on until every treatment enrollment's last touch has been frozen
        for sending (the machine's pace varies), bounded by ``Options.storm_max_s``."""
        deadline = time.monotonic() + self.options.storm_max_s
        while time.monotonic() < deadline and (behind := _behind(self._watch(), LAST_STEP)):
            log(f"{behind:,} enrollments have not sent {LAST_STEP!r} yet; faults go on")
            self._idle_until(time.monotonic() + 5.0)
        while self._aims:
            self._idle_until(time.monotonic() + 0.5)

    def _check_imports(self) -> None:
        for run in self.imports:
            assert run.proc is not None
            if run.proc.wait(timeout=300) != 0:
                raise RuntimeError(f"recall import ({run.name}) failed: see {run.log}")

    def _arm_weather(self) -> None:
        left = 1.0
        for kind, share in FAULT_MIX.items():
            rate = min(1.0, self.options.fault_rate * share / left)
            left -= self.options.fault_rate * share
            spec: dict[str, Any] = {"kind": kind, "count": None, "rate": rate}
            if kind in ("timeout", "stall"):
                spec["seconds"] = HELD_S
            if kind == "rate_limit":
                spec["retry_after"] = self.options.retry_after_s
            self._control("POST", "/_sandbox/faults", json=spec)

    def _idle_until(self, moment: float) -> None:
        """Supervise and nudge (the faults are on) until ``moment``."""
        while (now := time.monotonic()) < moment:
            self._supervise()
            if now >= self._next_nudge:
                self._next_nudge = now + NUDGE_EVERY_S
                self._nudge()
            time.sleep(min(0.25, moment - now))

    def _nudge(self) -> None:
        """Trigger ``chaos-nudge`` for the chosen people who have had all three touches:
        their caps are full, so each nudge must be refused, before and after Redis lost
        its data."""
        with self._watch().connect() as conn:
            done = conn.execute(sa.text(
                "SELECT e.user_id FROM enrollments e WHERE e.journey_id = :journey AND "
                "e.arm = 'treatment' AND (SELECT count(*) FROM touches t WHERE "
                "t.enrollment_id = e.id AND t.status IN ('sent', 'delivered')) = :steps"),
                {"journey": JOURNEY, "steps": len(STEPS)}).scalars().all()
        chosen = sorted(u for u in done
                        if int(u[1:]) % NUDGE_ONE_IN == 0 and u not in self._nudged)
        if not chosen:
            return
        self._nudged.update(chosen)
        path = self.dir / f"nudge-{self.weather.nudged}.jsonl"
        with path.open("w") as fh:
            for user_id in chosen:
                fh.write(json.dumps({"event_id": f"nudge-{user_id}", "user_id": user_id,
                                     "name": "nudge", "ts": datetime.now(UTC).isoformat(),
                                     "value": None, "props": {}}) + "\n")
        name = f"nudge{len(self.imports)}"
        self.imports.append(self._service(name, ["import", "events", str(path),
                                                 "--trigger"]).start())
        self.weather.nudged += len(chosen)
        log(f"nudging {len(chosen)} people whose caps are full")

    def _watch(self) -> sa.Engine:
        """The run's own connection to the database, to watch progress."""
        if self._watch_engine is None:
            self._watch_engine = _engine(self.db.url)
            self._exit.callback(self._watch_engine.dispose)
        return self._watch_engine

    def _supervise(self) -> None:
        """Fire aimed kills whose call arrived; replace killed workers when due, and any
        that died on their own."""
        self._fire_aims()
        now = time.monotonic()
        due = [t for t in self._respawn if t <= now]
        self._respawn = [t for t in self._respawn if t > now]
        for _ in due:
            self._start_worker(len(self.workers))
        for service in [*self.workers, *self.beats]:
            if service.proc is not None and not service.alive() and not service.killed:
                self.weather.unplanned_exits += 1
                log(f"{service.name} exited by itself ({service.proc.returncode}); restarted")
                service.start()

    def _do(self, action: Action) -> None:
        handlers: dict[str, Callable[[Action], None]] = {
            "wave": self._wave, "kill": self._random_kill, "aimed_kill": self._aimed_kill,
            "redis_restart": self._restart_redis, "beat2_start": self._beat2_start,
            "beat2_stop": self._beat2_stop,
        }
        handlers[action.kind](action)

    def _wave(self, action: Action) -> None:
        """Import the wave's events in the background: a CLI start takes seconds here, and
        the schedule must not wait for it."""
        wave = self._service(f"wave{action.arg}", [
            "import", "events", str(self.dir / f"wave-{action.arg}.jsonl"), "--trigger"])
        self.imports.append(wave.start())
        self.weather.waves += 1
        log(f"wave {action.arg} arriving")

    def _random_kill(self, action: Action) -> None:
        live = [w for w in self.workers if w.alive()]
        if not live:
            return
        victim = self.rng.choice(live)
        if action.arg == 1:
            children = [pid for pid in victim.group() if pid != victim.pid]
            if children:
                _sigkill(children)
                self.weather.kills["random:child"] += 1
                log(f"SIGKILL {victim.name}'s pool process(es) {children}")
                return
        self._kill_worker(victim)
        self.weather.kills["random:worker"] += 1

    def _kill_worker(self, victim: Service) -> None:
        victim.killed = True
        victim.kill()
        self._respawn.append(time.monotonic() + RESPAWN_S)
        log(f"SIGKILL {victim.name} (main process and children)")

    def _aimed_kill(self, action: Action) -> None:
        """Hold the next provider send (``timeout``: the provider did it; ``stall``: it did
        not); ``_supervise`` finds the worker process waiting for the answer and kills it."""
        kind = "stall" if action.arg % 2 else "timeout"
        ids = {self._control("POST", "/_sandbox/faults", json={
            "kind": kind, "method": "POST", "path_contains": path, "count": 1,
            "seconds": 60})["id"] for path in SEND_PATHS}
        self._aims.append(Aim(ids, kind, whole_worker=action.arg >= 2,
                              deadline=time.monotonic() + AIM_WAIT_S))

    def _fire_aims(self) -> None:
        if not self._aims:
            return
        held = self._control("GET", "/_sandbox/held")
        for aim in list(self._aims):
            mine = [h for h in held if h["fault"] in aim.fault_ids]
            if not mine and time.monotonic() < aim.deadline:
                continue
            self._aims.remove(aim)
            for fault_id in aim.fault_ids:
                self.sandbox.delete(f"/_sandbox/faults/{fault_id}")  # type: ignore[union-attr]
            if not mine:
                self.weather.kills["aimed:missed"] += 1
                log(f"aimed kill ({aim.kind}): no send arrived within {AIM_WAIT_S:.0f}s")
            for call in mine:
                self._kill_caller(call, whole_worker=aim.whole_worker, kind=aim.kind)
            if mine:
                self._control("POST", "/_sandbox/held/release",
                              json={"ids": [c["id"] for c in mine]})

    def _kill_caller(self, call: dict[str, Any], *, whole_worker: bool, kind: str) -> None:
        port = int(str(call["client"]).rsplit(":", 1)[1])
        candidates = [pid for w in self.workers if w.alive() for pid in w.group()]
        pid = owner_of_connection(port, self.sandbox_port, candidates)
        worker = next((w for w in self.workers if pid is not None and pid in w.group()), None)
        if pid is None or worker is None:
            self.weather.kills["aimed:missed"] += 1
            log(f"aimed kill: no worker holds {call['client']} ({call['path']})")
            return
        if whole_worker:
            self._kill_worker(worker)
        else:
            _sigkill([pid])
            log(f"SIGKILL {worker.name}'s pool process {pid}")
        self.weather.kills[f"aimed:{kind}"] += 1
        log(f"  ...it was waiting on {call['method']} {call['path']} (record #{call['seq']})")

    def _restart_redis(self, action: Action) -> None:
        self.redis.restart_losing_data()
        self.weather.redis_restarts += 1
        log("redis restarted empty (SIGKILL, no persistence)")

    def _beat2_start(self, action: Action) -> None:
        self.beats.append(self._service("beat2", ["beat"], state="beat2").start())
        self._beat2_since = time.monotonic()
        log("second beat started")

    def _beat2_stop(self, action: Action) -> None:
        if self._beat2_since is None:
            return
        beat = self.beats.pop()
        beat.killed = True
        beat.stop()
        self.weather.second_beat_s = time.monotonic() - self._beat2_since
        self._beat2_since = None
        log("second beat stopped")

    # --- 3. settle --------------------------------------------------------------------
    def settle(self) -> tuple[bool, float, dict[str, int]]:
        """Calm weather, then wait (bounded) until nothing is left to do."""
        self.calm_from = int(self._control("GET", "/_sandbox/status")["records"])
        self._control("DELETE", "/_sandbox/faults")
        self._control("POST", "/_sandbox/held/release")
        engine = _engine(self.db.url)
        began = time.monotonic()
        waiting: dict[str, int] = {}
        try:
            while time.monotonic() - began < self.options.settle_s:
                self._supervise()
                waiting = _waiting(engine)
                if not waiting:
                    return True, time.monotonic() - began, {}
                time.sleep(2.0)
            return False, time.monotonic() - began, waiting
        finally:
            engine.dispose()

    # --- 4. count ---------------------------------------------------------------------
    def collect(self) -> tuple[Tally, ProviderView, dict[str, Any]]:
        record = self._control("GET", "/_sandbox/record")
        (self.dir / "record.json").write_text(json.dumps(record))
        view = provider_view(record, self.calm_from)
        *exports, audit = self.recall_all([
            *(["export", kind, "--format", "jsonl", "--out", str(self.dir / f"{kind}.jsonl")]
              for kind in ("touches", "enrollments")),
            ["audit", "--journeys", str(PACKAGE / "journeys")],
        ], check=False)
        for export in exports:
            if export.returncode != 0:
                raise RuntimeError(f"recall {' '.join(export.args)} failed:\n{export.stderr}")
        touches = list(store_touches(json_lines((self.dir / "touches.jsonl").read_text())))
        enrollments = list(store_enrollments(
            row for row in json_lines((self.dir / "enrollments.jsonl").read_text())
            if row["journey_id"] == JOURNEY))
        expect = Expectation(steps=STEPS, caps=_caps(), timezone=ZoneInfo("Asia/Shanghai"),
                             capped=frozenset({NUDGE}))
        result = tally(self.people, enrollments, touches, view.sends, view.refusals, expect)
        self._write_stories(result, record)
        store = {"touches": dict(Counter(t.status for t in touches if t.step_id != NUDGE)),
                 "nudges": dict(Counter(f"{t.status}/{t.reason or '-'}" for t in touches
                                        if t.step_id == NUDGE)),
                 "enrollments": dict(Counter(e.arm for e in enrollments)),
                 "audit": _audit_counts(audit.stdout), "audit_exit": audit.returncode}
        return result, view, store


    def _write_stories(self, result: Tally, record: list[dict[str, Any]]) -> None:
        """What the store and the provider saw of each finding: per batch
        (``batches.jsonl``) and, for the first ones, per person (``stories.jsonl``)."""
        engine = _engine(self.db.url)
        try:
            with engine.connect() as conn:
                touches = [dict(r) for r in conn.execute(sa.text("SELECT * FROM touches"))
                           .mappings()]
                batches = [dict(r) for r in conn.execute(sa.text("SELECT * FROM send_batches"))
                           .mappings()]
        finally:
            engine.dispose()
        people = {p.user_id: p for p in self.people}

        def address(user_id: str, step_id: str) -> str:
            person = people[user_id]
            return {"wechat_article": person.openid, "sms": person.phone,
                    "wecom_group_invite": person.external_userid}[STEPS[step_id]]

        evidence = Evidence(touches, batches, record, STEPS, address)
        told = [f for f in result.findings if f.user_id in people and f.step_id in STEPS]
        _write_jsonl(self.dir / "batches.jsonl", evidence.by_batch(told))
        _write_jsonl(self.dir / "stories.jsonl", [evidence.story(f) for f in told[:STORIES]])


def _write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")


def check_journey() -> None:
    """The run's journey and policy must be valid before anything starts."""
    from orchestrator.journeys.loader import check_paths

    report = check_paths([PACKAGE / "journeys"], PACKAGE / "templates")
    if report.errors:
        problems = "\n".join(str(p) for p in report.errors)
        raise RuntimeError(f"the chaos journey is invalid:\n{problems}")


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def _recall() -> list[str]:
    script = Path(sys.executable).with_name("recall")
    return [str(script)] if script.exists() else [shutil.which("recall") or "recall"]


def _sigkill(pids: list[int]) -> None:
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _behind(engine: sa.Engine, step: str) -> int:
    """Treatment enrollments of the win-back journey whose ``step`` touch has not been
    frozen for sending yet (none yet, or still scheduled or claimed)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM enrollments e WHERE e.journey_id = :journey AND "
            "e.arm = 'treatment' AND NOT EXISTS (SELECT 1 FROM touches t WHERE "
            "t.enrollment_id = e.id AND t.step_id = :step AND "
            "t.status NOT IN ('scheduled', 'claimed'))"),
            {"journey": JOURNEY, "step": step}).scalar_one())


def _waiting(engine: sa.Engine) -> dict[str, int]:
    """Work not finished: active treatment enrollments, touches not yet at an outcome."""
    with engine.connect() as conn:
        touches: dict[str, int] = {row[0]: row[1] for row in conn.execute(sa.text(
            "SELECT status, count(*) FROM touches WHERE status IN "
            "('scheduled', 'claimed', 'sending', 'unknown') GROUP BY status"))}
        active = conn.execute(sa.text(  # the holdout stays active to be measured
            "SELECT count(*) FROM enrollments WHERE state = 'active' AND arm = 'treatment'"
        )).scalar_one()
    waiting = {f"touches:{k}": int(v) for k, v in touches.items()}
    if active:
        waiting["enrollments:active"] = int(active)
    return waiting


def _caps() -> list[Any]:
    from orchestrator.journeys.loader import load_all
    from orchestrator.policy.audit import cap_rules_of
    from orchestrator.policy.rules import PLATFORM_LIMITS

    _, policy = load_all(PACKAGE / "journeys", PACKAGE / "templates")
    return [*cap_rules_of(policy), *PLATFORM_LIMITS.values()]


def _audit_counts(text: str) -> dict[str, int]:
    """``violations: cap 0, quiet_hours 0, consent 0`` → counts."""
    for line in text.splitlines():
        if line.startswith("violations:"):
            pairs = (p.strip().rsplit(" ", 1) for p in line.split(":", 1)[1].split(","))
            return {kind: int(n.replace(",", "")) for kind, n in pairs if n}
    return {"unreadable": 1}


def report(out: TextIO, options: Options, weather: Weather, result: Tally, view: ProviderView,
           store: dict[str, Any], settled: tuple[bool, float, dict[str, int]],
           wall_s: float) -> bool:
    """The JSON lines; True when every count is zero and the run settled."""
    ok, settle_s, waiting = settled
    lines: list[dict[str, Any]] = []
    for count, value in result.totals().items():
        lines.append({"name": count, "value": value, "by": result.breakdown(count),
                      "examples": [f"{f.user_id} {f.step_id}: {f.detail}"
                                   for f in result.of(count)[:5]]})
    audit_caps = int(store["audit"].get("cap", 0)) + int(store["audit"].get("unreadable", 0))
    lines += [
        {"name": "audit_cap_violations", "value": audit_caps, "by": store["audit"]},
        {"name": "unsettled", "value": sum(waiting.values()), "by": waiting,
         "settle_s": round(settle_s, 1), "bound_s": options.settle_s},
        {"name": "kills", "value": sum(n for k, n in weather.kills.items()
                                       if not k.endswith("missed")),
         "by": dict(weather.kills)},
        {"name": "redis_restarts", "value": weather.redis_restarts},
        {"name": "second_beat_s", "value": round(weather.second_beat_s, 1)},
        {"name": "injected_faults", "value": sum(view.faults.values()), "by": dict(view.faults),
         "calls_under_faults": view.stormy_calls,
         "rate": round(sum(view.faults.values()) / max(1, view.stormy_calls), 3),
         "provider_calls": view.calls, "send_calls": view.send_calls},
        {"name": "run", "users": options.users, "workers": options.workers,
         "waves": weather.waves, "unplanned_exits": weather.unplanned_exits,
         "touches": store["touches"], "enrollments": store["enrollments"],
         "nudged": weather.nudged, "nudges": store["nudges"],
         "provider_sends": len(view.sends), "wall_s": round(wall_s, 1), "seed": options.seed},
    ]
    failed = any(result.totals().values()) or audit_caps or not ok
    lines.append({"name": "verdict", "value": "fail" if failed else "pass"})
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    out.flush()
    return not failed


def run(options: Options, workdir: Path, postgres_admin_url: str, redis_binary: str,
        out: TextIO, *, keep_db: bool = False) -> bool:
    began = time.monotonic()
    with ChaosRun(options, workdir, postgres_admin_url, redis_binary, keep_db) as chaos:
        chaos.prepare()
        chaos.chaos()
        log("chaos over; settling")
        settled = chaos.settle()
        log(f"settled={settled[0]} after {settled[1]:.0f}s; counting")
        result, view, store = chaos.collect()
        with (workdir / "findings.jsonl").open("w") as fh:
            for finding in result.findings:
                fh.write(json.dumps(asdict(finding), ensure_ascii=False) + "\n")
        return report(out, options, chaos.weather, result, view, store, settled,
                      time.monotonic() - began)
