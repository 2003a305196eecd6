"""Chat-turn throughput against the bare DRF endpoint, on real services.

Starts the fake Claude server (no delay), gunicorn (WSGI, gthread) and a Celery worker on
Postgres, Redis and the chosen broker, then drives three endpoints in turn with concurrent
clients: the bare one (token auth, one owned fetch, one insert), the floor (what any turn
costs in the frameworks alone: token auth, one owned fetch, a Celery task that makes the
worker's SDK call to Claude, the waiter woken through pub/sub; none of a turn's promises,
see bench/urls.py), the turn's statements (the floor plus the 11 SQL statements a turn
runs, in its transactions, and nothing else: bench/statements.py) and the chat turn, then
reads an ended turn again and again (the read phase: the GET a client answered 202 polls
with, so that a turn's own web CPU can be told from its polls'). It
prints requests per second, CPU per operation of
each process group (read from /proc) and the resident memory of the web and worker
processes. Usage (from the repo root, the services running; only 127.0.0.1 is ever
contacted):

    .venv/bin/python bench/turn_throughput.py [--seconds 20] [--clients 16[,64]]
        [--broker redis[,amqp]] [--turns N] [--no-floor] [--no-sql] [--no-read]
        [--spinners 2 [--spin loop] [--busy-first]] [--db-name isolation_bench]
        [--redis-db 15]

``--broker amqp`` uses RabbitMQ at 127.0.0.1:5672 in a virtual host of the run's own
(made and deleted with ``rabbitmqctl``). ``--turns N`` drives N turns (and N bare
requests) instead of a fixed time, and samples the web and worker processes' memory at
the start, middle and end of the turns, to show whether it grows with turns served.

CPU per operation is a group's user + system time over a phase divided by the operations
that succeeded: ``web`` is the gunicorn master and its workers, ``worker`` the Celery
worker's processes, ``postgres``, ``redis`` and ``rabbitmq`` every process of that server
on the machine (so anything else using them counts too), ``bench`` this process (the load
and the fake Claude). A turn that ``?wait`` answers with 202 is polled to its end, so a
client never posts into a turn still in flight; clients start a new session every
``--session-turns`` turns, so the history a turn loads does not grow with the run.

``--spinners N`` runs each client count's phases a second time beside N busy processes at
nice 19, which yield to every other process (``--spin-idle``: under SCHED_IDLE too): every
core is then busy whatever the clients, so what a busy machine costs a phase can be told
from what many clients cost it. ``--spin walk`` (the default) walks a few MB of objects
each time it runs, ``--spin loop`` touches next to no memory; ``--busy-first`` runs the
phases beside them before the quiet ones.

Postgres's part per operation: the connections it accepted, and where the server preloads
``pg_stat_statements`` the statements each phase ran, their execution time and the turn's
statements one by one (``bench/pg_stats.py``).

It creates and drops its own database (``--db-name``, default ``isolation_bench``) and
flushes its own Redis database (``--redis-db``, default 15), and serves on a free port;
run two benches side by side with different ones.
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import step_probe  # noqa: E402
from bench.many_users import bench_env, django_script  # noqa: E402
from bench.pg_stats import PgPhase, PgStats  # noqa: E402
from tests.fakes.claude import FakeClaude  # noqa: E402

HOST = "127.0.0.1"
AMQP = "amqp://guest:guest@127.0.0.1:5672"
TICK = os.sysconf("SC_CLK_TCK")
# Process groups whose CPU is reported; postgres, redis and rabbitmq are every process of
# that server on the machine (so other work on it counts too).
GROUPS = ("web", "worker", "postgres", "redis", "rabbitmq", "bench")
SERVER_COMMS = {"postgres": "postgres", "redis": "redis-server", "rabbitmq": "beam.smp"}
CLAUDE_MODEL = "claude-haiku-4-5-20251001"  # the service's default (API.md)
PHASES = ("bare", "floor", "sql", "merged", "turn", "read")
POLL_SECONDS = 0.05  # how often a client reads a turn its ?wait answered 202 early
IDLE = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
# Busy processes at nice 19, the lowest weight (15 against a normal process's 1024), so they
# yield the core to anything else that wants it. "walk" walks a few MB of Python objects
# each time it runs, as a Postgres backend, a worker thread or a client running between
# two of a web thread's steps would; "loop" touches next to no memory. Each ends once its
# parent, the bench, is gone (it is then another process's child), however the bench ended.
SPIN = {
    "walk": (
        "import json, os\n"
        "os.nice(19)\n"
        "parent = os.getppid()\n"
        "d = {str(i): [i, 'x' * (i % 64)] for i in range(50000)}\n"
        "while os.getppid() == parent:\n"
        "    json.loads(json.dumps(d))\n"
    ),
    "loop": (
        "import os\n"
        "os.nice(19)\n"
        "parent = os.getppid()\n"
        "while os.getppid() == parent:\n"
        "    for _ in range(1000000):\n"
        "        pass\n"
    ),
}


# /proc ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    ppid: int
    comm: str
    ticks: int  # utime + stime


def proc_table() -> dict[int, Proc]:
    """Every process now: parent, command name, CPU ticks used (user + system)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue  # exited meanwhile
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry)] = Proc(int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    return table


def descendants(root: int, table: dict[int, Proc]) -> set[int]:
    """``root`` and every process below it."""
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, p in table.items() if p.ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found & table.keys()


def group_pids(table: dict[int, Proc], web: int, worker: int) -> dict[str, set[int]]:
    groups = {"web": descendants(web, table), "worker": descendants(worker, table)}
    for group, comm in SERVER_COMMS.items():
        groups[group] = {pid for pid, p in table.items() if p.comm == comm}
    groups["bench"] = {os.getpid()}  # the load generator and the fake Claude
    return groups


def thread_counts(pids: set[int]) -> dict[tuple[int, int], tuple[int, int]]:
    """Context switches (voluntary + involuntary) and moves from one core to another (the
    scheduler's migrations) of every thread of ``pids``, by thread.

    A thread blocked on a socket, a lock or the interpreter lock switches out and back in
    each time it waits: how often, per operation, tells waiting from working. A thread
    moved to another core finds that core's caches cold for it."""
    counts = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    status = f.read().splitlines()
            except OSError:
                continue  # ended meanwhile
            try:
                with open(f"/proc/{pid}/task/{tid}/sched") as f:
                    sched = f.read().splitlines()
            except OSError:  # ended, or a kernel without CONFIG_SCHED_DEBUG: no moves read
                sched = []
            switches = sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)
            moves = sum(int(line.split(":")[1]) for line in sched if "se.nr_migrations" in line)
            counts[(pid, int(tid))] = (switches, moves)
    return counts


def cpu_snapshot(web: int, worker: int) -> tuple[dict[str, dict[int, int]], set[int]]:
    """CPU ticks per process, by group; and the web group's processes."""
    table = proc_table()
    groups = group_pids(table, web, worker)
    ticks = {group: {pid: table[pid].ticks for pid in pids} for group, pids in groups.items()}
    return ticks, groups["web"]


class CpuMeter:
    """CPU milliseconds each group uses from now until ``stop()``.

    Sampled every second, so a process that exits meanwhile (a Postgres backend closed
    after ``CONN_MAX_AGE``) still counts up to its last sample; a new one counts in full.
    """

    def __init__(self, web: int, worker: int, interval: float = 1.0) -> None:
        self.web, self.worker, self.interval = web, worker, interval
        self.start, web_pids = cpu_snapshot(web, worker)
        self.last = {group: dict(ticks) for group, ticks in self.start.items()}
        self.threads_start = thread_counts(web_pids)
        self.threads_last = dict(self.threads_start)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self._update()

    def _update(self) -> None:
        snapshot, web_pids = cpu_snapshot(self.web, self.worker)
        for group, ticks in snapshot.items():
            self.last[group].update(ticks)
        self.threads_last.update(thread_counts(web_pids))

    def web_threads(self) -> tuple[int, int]:
        """The web threads' context switches and migrations since the start (after
        ``stop()``)."""
        switches = moves = 0
        for thread, (switched, moved) in self.threads_last.items():
            switched_before, moved_before = self.threads_start.get(thread, (0, 0))
            switches += switched - switched_before
            moves += moved - moved_before
        return switches, moves

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join()
        self._update()
        return {
            group: sum(t - self.start[group].get(pid, 0) for pid, t in self.last[group].items())
            * 1000
            / TICK
            for group in GROUPS
        }


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_of(web: int, worker: int) -> dict[str, float]:
    """Resident memory of each web process (master, workers) and of the worker's processes."""
    table = proc_table()
    out = {}
    for role, root in (("web", web), ("worker", worker)):
        for pid in sorted(descendants(root, table)):
            kind = "master" if pid == root and role == "web" else role
            out[f"{kind}:{pid}"] = rss_mb(pid)
    return out


# Setup -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def prepare(env: dict[str, str], db: str, redis_db: int, users: int) -> list[str]:
    """A fresh database with ``users`` users; return one API token each."""
    pg = ["-h", HOST, "-U", "postgres"]
    subprocess.run(["dropdb", *pg, "--if-exists", db], check=True)
    subprocess.run(["createdb", *pg, db], check=True)
    flush_redis(redis_db)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    script = (
        "import json;from django.contrib.auth.models import User;"
        "from sessions_app.tokens import auth_token_issue;out=[]\n"
        f"for i in range({users}):\n"
        " u=User.objects.create_user(f'bench{i}');key,_=auth_token_issue(user=u)\n"
        " out.append(key)\n"
        "print(json.dumps(out))"
    )
    return json.loads(django_script(env, script))


def flush_redis(redis_db: int) -> None:
    subprocess.run(
        ["redis-cli", "-h", HOST, "-n", str(redis_db), "flushdb"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "--quiet", *args], check=True, capture_output=True)


@dataclass
class Stack:
    """gunicorn and a Celery worker on one broker."""

    env: dict[str, str]
    port: int
    web_workers: int
    web_threads: int
    concurrency: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    pg: PgStats | None = None

    @property
    def web(self) -> int:
        return self.procs[0].pid

    @property
    def worker(self) -> int:
        return self.procs[1].pid

    def start(self) -> "Stack":
        gunicorn = [sys.executable, "-m", "gunicorn", "isolation_site.wsgi"]
        gunicorn += ["-b", f"{HOST}:{self.port}", "-w", str(self.web_workers), "-k", "gthread"]
        gunicorn += ["--threads", str(self.web_threads), "--timeout", "90"]
        gunicorn += ["--log-level", "warning"]
        gunicorn += ["--no-control-socket", "--env", "DJANGO_SETTINGS_MODULE=bench.settings"]
        celery = [sys.executable, "-m", "celery", "-A", "isolation_site", "worker"]
        celery += ["-P", "threads", "-c", str(self.concurrency), "-l", "warning"]
        celery += ["--without-gossip", "--without-mingle"]
        self.procs.append(subprocess.Popen(gunicorn, cwd=ROOT, env=self.env))
        # Its banner goes to stdout; warnings and errors still reach stderr.
        self.procs.append(
            subprocess.Popen(celery, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL)
        )
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class Spinners:
    """``count`` busy processes at nice 19 (``SPIN[kind]``), for the length of a ``with``
    block.

    They yield to every other process, so a phase with one client keeps its concurrency but
    finds no core idle: the machine a phase with many clients runs on, without the many
    clients. Their own CPU counts in no group."""

    def __init__(self, count: int, kind: str = "walk", idle: bool = False) -> None:
        self.count, self.code = count, SPIN[kind]
        if idle:  # SCHED_IDLE: run only when nothing else is runnable
            self.code = IDLE + self.code
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Spinners":
        try:
            for _ in range(self.count):
                spinner = [sys.executable, "-c", self.code]
                # Holding none of the bench's pipes, they keep no reader of its output waiting.
                self.procs.append(
                    subprocess.Popen(spinner, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                )
            time.sleep(1)  # past their start-up, to the loop
        except BaseException:  # an interrupted start leaves none running
            self.__exit__()
            raise
        print("# spinners on", flush=True)  # bench/busy_profile.sh labels phases by these
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        print("# spinners off", flush=True)


# Load --------------------------------------------------------------------------------------


class Clients:
    """Concurrent clients, one user (token) each, on one keep-alive pool."""

    def __init__(self, base: str, tokens: list[str], session_turns: int) -> None:
        self.base = base
        self.tokens = tokens
        self.session_turns = session_turns
        self.early = 0  # turns whose ?wait answered 202 before the end (polled instead)
        self.polls = 0  # the GETs those turns took
        self.latencies: list[float] = []  # seconds per successful operation, polls included
        self.lock = threading.Lock()
        self.http = urllib3.PoolManager(maxsize=len(tokens), retries=False, timeout=60)

    def _post(self, token: str, path: str, body: dict) -> urllib3.BaseHTTPResponse:
        return self.http.request(
            "POST",
            self.base + path,
            body=json.dumps(body),
            headers={**self._auth(token), "Content-Type": "application/json"},
        )

    def new_session(self, token: str) -> str:
        response = self._post(token, "/api/v1/sessions/", {})
        if response.status != 201:
            raise RuntimeError(f"session not created: {response.status} {response.data[:200]}")
        return response.json()["id"]

    def _succeeds(self, token: str, path: str) -> bool:
        """Post once; a turn succeeds if it ends ``completed``.

        A ``?wait`` may answer 202 before the turn ends (its wait ran out, or the server
        had no wait slot free): then poll the turn until it ends, as a client must before
        its next message (which would otherwise get 409).
        """
        response = self._post(token, path, {"content": f"hello {uuid.uuid4()}"})
        if response.status == 201:
            return True  # the bare endpoint
        if response.status == 202:
            with self.lock:
                self.early += 1
            return self._poll(token, response.json()["id"]) == "completed"
        return response.status == 200 and response.json().get("status") == "completed"

    def _ended_turn(self, token: str, session: str) -> str:
        """Post one turn in ``session``, see it end; return its id (the read phase's)."""
        response = self._post(token, turn_path(session), {"content": "a turn to read"})
        turn_id = response.json()["id"]
        if response.status == 202:
            self._poll(token, turn_id)
        return turn_id

    def _read(self, token: str, turn_id: str) -> str | None:
        """GET the turn once, as a client polls it; its status, or None if not answered 200."""
        response = self.http.request(
            "GET", f"{self.base}/api/v1/turns/{turn_id}/", headers=self._auth(token)
        )
        return response.json().get("status") if response.status == 200 else None

    def _poll(self, token: str, turn_id: str, timeout: float = 120) -> str:
        """Read the turn every ``POLL_SECONDS`` until it ends; return its last status.

        The first read comes one interval after the 202, not at once: the 202 was the turn
        still pending a moment ago, and a read at once would find it so again, a request
        every polled turn would pay for and no client needs.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            status = self._read(token, turn_id)
            with self.lock:
                self.polls += 1
            if status not in ("pending", "running"):
                return str(status)
        return "timeout"

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Token {token}"}

    def run(
        self,
        path_for: Callable[[str], str],
        *,
        seconds: float,
        ops: int = 0,
        at_half: Callable[[], None] | None = None,
        read: bool = False,
    ) -> tuple[int, int, float]:
        """Drive ``path_for(session)`` until ``seconds`` pass or ``ops`` requests were sent.

        Returns (successes, errors, elapsed seconds); ``early`` then holds how many turns
        were answered 202 and polled to their end. ``at_half`` runs once, when half of
        ``ops`` have succeeded. ``read``: each client posts one turn in its session, then
        reads that ended turn again and again (``path_for`` unused).
        """
        sessions = {token: self.new_session(token) for token in self.tokens}
        state = {"sent": 0, "done": 0, "errors": 0}
        lock = self.lock
        self.early = self.polls = 0
        self.latencies = []
        deadline = time.monotonic() + seconds

        def client(token: str) -> None:
            session, served = sessions[token], 0
            turn_id = self._ended_turn(token, session) if read else ""
            while time.monotonic() < deadline:
                with lock:
                    if ops and state["sent"] >= ops:
                        return
                    state["sent"] += 1
                try:
                    if not read and self.session_turns and served == self.session_turns:
                        session, served = self.new_session(token), 0
                    sent = time.perf_counter()
                    if read:
                        ok = self._read(token, turn_id) == "completed"
                    else:
                        ok = self._succeeds(token, path_for(session))
                    took = time.perf_counter() - sent
                except (urllib3.exceptions.HTTPError, RuntimeError):
                    ok = False
                served += 1
                with lock:
                    state["done" if ok else "errors"] += 1
                    if ok:
                        self.latencies.append(took)
                    half = ok and ops and state["done"] == ops // 2
                if half and at_half:
                    at_half()

        threads = [threading.Thread(target=client, args=(token,)) for token in self.tokens]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return state["done"], state["errors"], time.monotonic() - started


def wait_healthy(base: str, timeout: float = 60) -> None:
    http = urllib3.PoolManager(retries=False, timeout=5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http.request("GET", base + "/healthz").status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base}/healthz not 200 within {timeout}s")


@dataclass
class Phase:
    name: str
    done: int
    errors: int
    elapsed: float
    cpu: dict[str, float]  # ms per successful operation, by group
    early: int = 0  # turns answered 202 before their end, then polled
    polls: int = 0  # the GETs those turns took
    latencies: list[float] = field(default_factory=list)
    pg: PgPhase | None = None
    switches: float = 0.0  # the web threads' context switches per successful operation
    migrations: float = 0.0  # their moves from one core to another, per operation
    span: tuple[float, float] = (0.0, 0.0)  # its start and end, monotonic seconds

    @property
    def polls_per_op(self) -> float:
        """The GETs its 202-answered turns took, per successful operation."""
        return self.polls / max(self.done, 1)

    def latency_ms(self, q: float) -> float:
        """The ``q`` quantile of a successful operation's time, in ms (client side)."""
        ordered = sorted(self.latencies)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1e3 if ordered else 0.0

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0

    def over(self, other: "Phase") -> float:
        """This phase's rate as a share of ``other``'s (0 if ``other`` did nothing)."""
        return self.rate / other.rate if other.rate else 0.0

    @property
    def cpu_all(self) -> float:
        """CPU ms per operation of every group together (the load generator's included)."""
        return sum(self.cpu.values())

    @property
    def cores(self) -> float:
        """How many cores the phase kept busy: near the machine's count, it was CPU-bound."""
        return self.rate * self.cpu_all / 1000


def measure(
    stack: Stack, clients: Clients, name: str, path_for, args, at_half=None, read=False
) -> Phase:
    if stack.pg:
        stack.pg.start()
    meter = CpuMeter(stack.web, stack.worker)
    seconds = args.max_seconds if args.turns else args.seconds
    started = time.clock_gettime(time.CLOCK_MONOTONIC)
    done, errors, elapsed = clients.run(
        path_for, seconds=seconds, ops=args.turns, at_half=at_half, read=read
    )
    # When, on the clock `perf record -k CLOCK_MONOTONIC` stamps its samples with, so that a
    # profile of the whole run can be cut into phases (bench/busy_profile.sh).
    ended = time.clock_gettime(time.CLOCK_MONOTONIC)
    print(f"# phase {name}: monotonic {started:.3f} to {ended:.3f}, {done} done", flush=True)
    cpu = {group: ms / max(done, 1) for group, ms in meter.stop().items()}
    pg = stack.pg.stop() if stack.pg else None
    switches, migrations = meter.web_threads()
    return Phase(
        name,
        done,
        errors,
        elapsed,
        cpu,
        clients.early,
        clients.polls,
        clients.latencies,
        pg,
        switches / max(done, 1),
        migrations / max(done, 1),
        (started, ended),
    )


def run_phases(stack: Stack, clients: Clients, args, rss: dict | None = None) -> dict:
    """Each phase the run asks for, in order, by name (None for one it skips); with ``rss``,
    the web and worker processes' memory at the turn phase's start, middle and end."""
    phases = {"bare": measure(stack, clients, "bare", bare_path, args)}
    phases["floor"] = measure(stack, clients, "floor", floor_path, args) if args.floor else None
    phases["sql"] = measure(stack, clients, "sql", sql_path, args) if args.sql else None
    phases["merged"] = measure(stack, clients, "merged", merged_path, args) if args.merged else None

    def sample(moment: str) -> None:
        if rss is not None:
            rss[moment] = rss_of(stack.web, stack.worker)

    sample("start")
    phases["turn"] = measure(
        stack, clients, "turn", turn_path, args, at_half=lambda: sample("middle")
    )
    sample("end")
    # What one poll costs, to tell a turn's own web CPU from its polls': the same GET a
    # client answered 202 sends, read from the same processes in the same run.
    phases["read"] = (
        measure(stack, clients, "read", turn_path, args, read=True) if args.read else None
    )
    return phases


def busy_phases(stack: Stack, clients: Clients, args) -> dict[str, Phase]:
    """The run's phases beside ``args.spinners`` spinners, by name."""
    with Spinners(args.spinners, args.spin, args.spin_idle):
        phases = run_phases(stack, clients, args)
    return {name: phase for name, phase in phases.items() if phase}


def turn_path(session: str) -> str:
    return f"/api/v1/sessions/{session}/messages/?wait=30"


def bare_path(session: str) -> str:
    return f"/bench/bare/{session}/"


def floor_path(session: str) -> str:
    return f"/bench/floor/{session}/"


def sql_path(session: str) -> str:
    return f"/bench/sql/{session}/"


def merged_path(session: str) -> str:
    return f"/bench/merged/{session}/"


def run_broker(broker: str, args, base_env: dict[str, str], tokens: list[str]) -> list[dict]:
    """Start the stack on ``broker``, measure every client count; return the results."""
    env = dict(base_env)
    vhost = f"{args.db_name}-{os.getpid()}"
    if broker == "amqp":
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        env["CELERY_BROKER_URL"] = f"{AMQP}/{vhost}"
    flush_redis(args.redis_db)
    port = args.port or free_port()
    base = f"http://{HOST}:{port}"
    stack = Stack(env, port, args.web_workers, args.web_threads, args.celery_concurrency).start()
    stack.pg = PgStats(args.db_name)
    results = []
    try:
        wait_healthy(base)
        # Warm up: every web thread, database connection and the worker's consumer.
        warm = Clients(base, tokens, 0)
        warm.run(turn_path, seconds=60, ops=len(tokens))
        for count in args.clients:
            results.append(measure_clients(stack, base, broker, count, args, tokens))
        results[-1]["rss_after"] = rss_of(stack.web, stack.worker)
    finally:
        stack.stop()
        if broker == "amqp":
            rabbitmqctl("delete_vhost", vhost)
    if args.probe:  # the workers wrote their steps as they exited
        probe_report(results, step_probe.read(env["BENCH_STEP_PROBE"]))
    return results


def probe_report(results: list[dict], calls: list) -> None:
    for result in results:
        for name in PHASES:
            phase = result.get(name)
            if phase is None:
                continue
            print(
                f"\nSteps in the gunicorn workers, broker={result['broker']} "
                f"clients={result['clients']} phase={name} (CPU in microseconds):"
            )
            print("| step | calls per op | CPU per call, p50 | CPU per op |")
            print("| --- | --- | --- | --- |")
            for row in step_probe.table(calls, phase.span, phase.done):
                print(row)


def measure_clients(stack: Stack, base: str, broker: str, count: int, args, tokens) -> dict:
    clients = Clients(base, tokens[:count], args.session_turns)
    # The same phases again with every core kept busy, to tell what many clients cost the
    # code (more polls, more waiting threads) from what a busy machine costs any code;
    # --busy-first runs them before the quiet ones, so that the order (a fuller database,
    # a warmer process) can be told from the spinners.
    busy: dict[str, Phase] = {}
    if args.spinners and args.busy_first:
        busy = busy_phases(stack, clients, args)
    rss: dict[str, dict[str, float]] = {}
    result = {"broker": broker, "clients": count, **run_phases(stack, clients, args, rss)}
    if args.spinners and not args.busy_first:
        busy = busy_phases(stack, clients, args)
    result |= {"rss": rss, "busy": busy}
    report(result, args)
    return result


# Output ----------------------------------------------------------------------------------


def report(result: dict, args) -> None:
    bare, floor, sql, merged, turn, read = (result[name] for name in PHASES)
    phases = [phase for phase in (bare, floor, sql, merged, turn, read) if phase]
    print(f"\n== broker={result['broker']} clients={result['clients']}", flush=True)
    for phase in phases:
        unit = "req/s" if phase.name in ("bare", "read") else "turns/s"
        print(
            f"{phase.name:5} {phase.rate:8.1f} {unit:7} ({phase.done} in {phase.elapsed:.1f} s, "
            f"{phase.errors} errors, {phase.early} answered 202 and polled"
            f" in {phase.polls} GETs)"
        )
    print(f"ratio {turn.over(bare):8.3f}  (goal: at least 0.35; ARCHITECTURE.md's third: 0.333)")
    if read:
        print(
            f"polls {turn.polls_per_op:8.3f}  GETs per turn at"
            f" {read.cpu['web']:.2f} ms of web CPU each (the read phase): the turn's web"
            f" less its polls {less_polls(turn, read, web_cpu):.2f} ms"
        )
    if floor:
        print(
            f"floor {floor.over(bare):8.3f}  of bare (the frameworks alone: a turn's lower "
            f"bound); turn {turn.over(floor):.3f}"
            " of the floor"
        )
    if sql:
        print(
            f"sql   {sql.over(bare):8.3f}  of bare (the floor and the turn's statements, nothing "
            f"else: the most a turn keeping its promises can reach); turn {turn.over(sql):.3f}"
            " of it"
        )
    if merged:
        print(
            f"merged {merged.over(bare):7.3f}  of bare (the same statements, each transaction's"
            f" merged into one: 6 instead of 11); turn {turn.over(merged):.3f} of it"
        )
    for phase in phases:
        print(
            f"{phase.name:5} latency p50 {phase.latency_ms(0.5):.1f} ms, "
            f"p99 {phase.latency_ms(0.99):.1f} ms"
        )
    print("CPU ms per operation: " + "  ".join(f"{g:>8}" for g in GROUPS) + "  web+worker")
    for phase in phases:
        cells = "  ".join(f"{phase.cpu[g]:8.2f}" for g in GROUPS)
        print(f"  {phase.name:19}{cells}  {phase.cpu['web'] + phase.cpu['worker']:10.2f}")
    print(
        "web context switches (and moves between cores) per operation: "
        + "  ".join(f"{p.name} {p.switches:.1f} ({p.migrations:.1f})" for p in phases)
    )
    print("RSS MB (turn phase): " + rss_line(result["rss"]), flush=True)
    pg_report(phases)
    busy = result["busy"]
    if busy:
        print(f"With {args.spinners} {args.spin} spinners at nice 19 (every core busy):")
        for phase in busy.values():
            print(
                f"  {phase.name:5} {phase.rate:8.1f}/s  CPU ms per operation: web "
                f"{phase.cpu['web']:.2f}, worker {phase.cpu['worker']:.2f}, postgres "
                f"{phase.cpu['postgres']:.2f}; {phase.switches:.1f} web switches "
                f"({phase.migrations:.1f} moves between cores); "
                f"{phase.polls_per_op:.3f} GETs per operation; p50 "
                f"{phase.latency_ms(0.5):.1f} ms, p99 {phase.latency_ms(0.99):.1f} ms"
            )


def pg_report(phases: list[Phase]) -> None:
    """Postgres per operation; the turn's statements one by one where pg_stat_statements is."""
    print("Postgres per operation: statements, execution ms (pg_stat_statements), connections")
    for phase in phases:
        if phase.pg:
            calls, ms, sessions = phase.pg.per_op(phase.done)
            stats = f"{calls:6.2f} {ms:7.3f} ms" if phase.pg.counted else "- (not preloaded)"
            print(f"  {phase.name:6} {stats} {sessions:8.4f} new connections")
    turn = next(phase for phase in phases if phase.name == "turn")
    if turn.pg and turn.pg.counted:
        print(f"  the {turn.name} phase's statements (calls per operation, mean ms, SQL):")
        for calls, ms, sql in turn.pg.statements[:14]:
            print(f"    {calls / max(turn.done, 1):5.2f} {ms / max(calls, 1):6.3f}  {sql[:90]}")


def rss_line(rss: dict[str, dict[str, float]]) -> str:
    parts = []
    for moment in ("start", "middle", "end"):
        if moment in rss:
            cells = " ".join(f"{k.split(':')[0]}={v:.0f}" for k, v in rss[moment].items())
            parts.append(f"{moment}: {cells}")
    return " | ".join(parts)


def summary(results: list[dict]) -> None:
    print(
        "\n| broker | clients | bare req/s | turns/s | ratio | CPU ms/turn web | worker |"
        " postgres | redis | rabbitmq | CPU ms/bare web | postgres | turn p50 ms | bare p50 ms |"
        " GETs/turn | CPU ms/GET web | turn web less polls |"
    )
    print("| --- " * 17 + "|")
    for r in results:
        b, t, g = r["bare"], r["turn"], r["read"]
        polls = (
            f"{t.polls_per_op:.2f} | {g.cpu['web']:.2f} | {less_polls(t, g, web_cpu):.2f}"
            if g
            else "- | - | -"
        )
        print(
            f"| {r['broker']} | {r['clients']} | {b.rate:.1f} | {t.rate:.1f} | "
            f"{t.over(b):.3f} | {t.cpu['web']:.2f} | "
            f"{t.cpu['worker']:.2f} | {t.cpu['postgres']:.2f} | {t.cpu['redis']:.2f} | "
            f"{t.cpu['rabbitmq']:.2f} | {b.cpu['web']:.2f} | {b.cpu['postgres']:.2f} | "
            f"{t.latency_ms(0.5):.1f} | {b.latency_ms(0.5):.1f} | {polls} |"
        )
    baseline_table(
        results,
        "floor",
        "The floor (the frameworks alone), beside the bare endpoint and the turn. CPU: ms "
        "per operation summed over every group; cores: how many of the machine's cores the "
        "phase kept busy; ceiling: the ratio a turn would reach if nothing but the floor and "
        "Postgres's own work on the turn's statements cost anything:",
        ceiling=True,
    )
    baseline_table(
        results,
        "sql",
        "The turn's statements alone (the floor and the turn's 11 SQL statements in its "
        "transactions, nothing else), beside the bare endpoint and the turn:",
    )
    baseline_table(
        results,
        "merged",
        "The turn's statements merged (the sql phase with each transaction's statements one "
        "statement, in autocommit: 6 statements instead of 11, no BEGIN and COMMIT), beside "
        "the bare endpoint and the turn:",
    )
    for attr, heading in (
        (
            "switches",
            "context switches (a thread switching out each time it waits on a socket,"
            " a lock or the interpreter lock)",
        ),
        ("migrations", "moves from one core to another"),
    ):
        thread_table(results, attr, heading)
    busy_table(results)
    for r in results:
        if "rss_after" in r:
            cells = ", ".join(f"{k} {v:.0f} MB" for k, v in r["rss_after"].items())
            print(f"RSS after the {r['broker']} run: {cells}")


def baseline_table(results: list[dict], name: str, heading: str, ceiling: bool = False) -> None:
    """The ``name`` phase (floor or sql) of each result beside its bare endpoint and its
    turn; nothing if the run skipped that phase."""
    rows = [r for r in results if r[name]]
    if not rows:
        return
    extra = " ceiling |" if ceiling else ""
    print(
        f"\n{heading}\n| broker | clients | {name} turns/s | {name} / bare | turn / {name} | "
        f"CPU ms/{name} web | worker | postgres | CPU bare / {name} / turn | "
        f"cores bare / {name} / turn |{extra} {name} p50 ms |"
    )
    print("| --- " * (11 + ceiling) + "|")
    for r in rows:
        b, p, t = r["bare"], r[name], r["turn"]
        cells = [
            r["broker"],
            str(r["clients"]),
            f"{p.rate:.1f}",
            f"{p.over(b):.3f}",
            f"{t.over(p):.3f}",
            *(f"{p.cpu[group]:.2f}" for group in ("web", "worker", "postgres")),
            f"{b.cpu_all:.1f} / {p.cpu_all:.1f} / {t.cpu_all:.1f}",
            f"{b.cores:.2f} / {p.cores:.2f} / {t.cores:.2f}",
        ]
        if ceiling:
            cells.append(f"{b.cpu_all / (p.cpu_all + t.cpu['postgres'] - p.cpu['postgres']):.3f}")
        cells.append(f"{p.latency_ms(0.5):.1f}")
        print("| " + " | ".join(cells) + " |")


def thread_table(results: list[dict], attr: str, heading: str) -> None:
    """The web threads' ``attr`` (switches, migrations) per operation of every phase."""
    print(
        f"\nThe web threads' {heading} per operation (the turn's less its polls' at the read"
        " phase's per GET):\n| broker | clients | " + " | ".join(PHASES) + " |"
        " turn less polls |\n" + "| --- " * (len(PHASES) + 3) + "|"
    )
    per_op = attrgetter(attr)
    for r in results:
        cells = [f"{per_op(r[name]):.1f}" if r[name] else "-" for name in PHASES]
        cells.append(f"{less_polls(r['turn'], r['read'], per_op):.1f}" if r["read"] else "-")
        print(f"| {r['broker']} | {r['clients']} | " + " | ".join(cells) + " |")


def busy_table(results: list[dict]) -> None:
    """Web CPU per operation of each phase with the cores idle between its steps and with
    them kept busy by the spinners, beside each other; nothing if the run had no spinners."""
    rows = [r for r in results if r["busy"]]
    if not rows:
        return
    print(
        "\nWeb CPU ms per operation, the machine otherwise idle -> every core kept busy by"
        " spinners at nice 19 (the turn less its polls, each priced at its own read phase's"
        " GET), and the turn's web moves between cores per turn:\n| broker | clients | bare |"
        " floor | sql | turn less polls | turn busy / turn | turn's moves |\n" + "| --- " * 8 + "|"
    )
    for r in rows:
        quiet, busy = r, r["busy"]
        cells = []
        for name in ("bare", "floor", "sql"):
            if quiet[name] and name in busy:
                cells.append(f"{web_cpu(quiet[name]):.2f} -> {web_cpu(busy[name]):.2f}")
            else:
                cells.append("-")
        mark = ""
        if quiet["read"] and "read" in busy:
            turn = less_polls(quiet["turn"], quiet["read"], web_cpu)
            turn_busy = less_polls(busy["turn"], busy["read"], web_cpu)
        else:  # no read phase to price the polls with
            turn, turn_busy = web_cpu(quiet["turn"]), web_cpu(busy["turn"])
            mark = " (polls in)"
        moves = f"{quiet['turn'].migrations:.1f} -> {busy['turn'].migrations:.1f}"
        cells += [f"{turn:.2f} -> {turn_busy:.2f}{mark}", f"{turn_busy / turn:.2f}", moves]
        print(f"| {r['broker']} | {r['clients']} | " + " | ".join(cells) + " |")


def web_cpu(phase: Phase) -> float:
    return phase.cpu["web"]


def less_polls(turn: Phase, read: Phase, per_op: Callable[[Phase], float]) -> float:
    """The turn's ``per_op`` figure (web CPU, switches) less its polls', each priced at the
    read phase's GET.

    A polled turn's POST skipped its wait, so this is a little under what the turn costs
    where every wait finds a slot."""
    return per_op(turn) - turn.polls_per_op * per_op(read)


def claude_own_ms(url: str, calls: int = 300) -> float:
    """The p50 of one call to the fake Claude through the real SDK, as a worker makes it:
    what a turn would take if everything else cost nothing."""
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key="bench", max_retries=0)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        client.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=256,
            messages=[{"role": "user", "content": "hello"}],
        )
        times.append(time.perf_counter() - started)
    client.close()
    return statistics.median(times) * 1e3


def comma_list(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda text: [kind(part) for part in text.split(",") if part]


def broker_kind(name: str) -> str:
    if name not in ("redis", "amqp"):
        raise argparse.ArgumentTypeError(f"broker must be redis or amqp, not {name!r}")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="each phase's length")
    parser.add_argument("--turns", type=int, default=0, help="N turns (and N bare) instead")
    parser.add_argument("--max-seconds", type=float, default=1800, help="bound with --turns")
    parser.add_argument("--clients", type=comma_list(int), default=[16], help="e.g. 16,64")
    parser.add_argument("--broker", type=comma_list(broker_kind), default=["redis"])
    parser.add_argument("--db-name", default="isolation_bench")
    parser.add_argument("--redis-db", type=int, default=15)
    parser.add_argument("--port", type=int, default=0, help="gunicorn's; default a free one")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument(
        "--web-threads", type=int, default=8, help="each worker's (API.md's --threads 8)"
    )
    parser.add_argument("--celery-concurrency", type=int, default=8)
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor phase (a turn's Celery, SDK and pub/sub work, nothing else)",
    )
    parser.add_argument(
        "--no-sql",
        dest="sql",
        action="store_false",
        help="skip the sql phase (the floor and a turn's SQL statements, nothing else)",
    )
    parser.add_argument(
        "--no-merged",
        dest="merged",
        action="store_false",
        help="skip the merged phase (the sql phase with each transaction's statements merged"
        " into one)",
    )
    parser.add_argument(
        "--no-read",
        dest="read",
        action="store_false",
        help="skip the read phase (each client GETs one ended turn again and again: what a"
        " poll costs)",
    )
    parser.add_argument(
        "--session-turns",
        type=int,
        default=25,
        help="a client starts a new session after this many turns (0: never), so the "
        "history a turn loads does not grow with the run's length",
    )
    parser.add_argument(
        "--spinners",
        type=int,
        default=0,
        help="after each client count's phases, run them again beside this"
        " many busy processes at nice 19 (so every core is busy whatever the clients)",
    )
    parser.add_argument(
        "--spin-idle",
        action="store_true",
        help="the spinners under SCHED_IDLE as well: run only when nothing else is runnable",
    )
    parser.add_argument(
        "--busy-first",
        action="store_true",
        help="with --spinners, run the phases beside them before the quiet ones",
    )
    parser.add_argument(
        "--spin",
        choices=sorted(SPIN),
        default="walk",
        help="what the spinners do: walk a few MB of objects or loop touching next to no memory",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="time each framework step of a request in the gunicorn workers, call by call"
        " (bench/step_probe.py), and print them per phase",
    )
    args = parser.parse_args()
    results = []
    with FakeClaude(keep_alive=True) as fake, tempfile.TemporaryDirectory() as probed:
        env = bench_env(
            fake.url,
            DJANGO_SETTINGS_MODULE="bench.settings",
            DATABASE_URL=f"postgres://postgres@{HOST}:5432/{args.db_name}",
            REDIS_URL=f"redis://{HOST}:6379/{args.redis_db}",
        )
        env.pop("CELERY_BROKER_URL", None)  # redis: REDIS_URL's database
        if args.probe:
            env["BENCH_STEP_PROBE"] = probed
        tokens = prepare(env, args.db_name, args.redis_db, max(args.clients))
        size = f"turns={args.turns}" if args.turns else f"seconds={args.seconds}"
        print(
            f"{size} clients={args.clients} brokers={args.broker} "
            f"web_workers={args.web_workers} web_threads={args.web_threads} "
            f"celery_threads={args.celery_concurrency} "
            f"session_turns={args.session_turns} db={args.db_name} redis_db={args.redis_db}"
            + (
                f" spinners={args.spinners} spin={args.spin} idle={args.spin_idle}"
                f" busy_first={args.busy_first}"
                if args.spinners
                else ""
            )
        )
        for broker in args.broker:
            results += run_broker(broker, args, env, tokens)
        print(f"\n{fake.request_count()} Claude calls in all")
        claude_ms = claude_own_ms(fake.url)
    print(f"The fake Claude's own time through the SDK: p50 {claude_ms:.1f} ms (one caller)")
    summary(results)


if __name__ == "__main__":
    main()
