"""Many users at once, each posting turns with ``?wait``: every turn ends, no reset, no error.

Starts the fake Claude server, the web server (gunicorn exactly as API.md starts it, or
uvicorn with two workers) and one Celery worker on Postgres and Redis, then drives
``--users`` clients, each posting ``--turns`` messages with ``?wait=30`` one after the
other on a kept-alive connection of its own. A client answered 202 polls
``GET /api/v1/turns/{id}/`` until the turn ends. Every reply must echo its own turn's
canary and no other user's. Usage (from the repo root, Postgres and Redis running):

    .venv/bin/python bench/many_users.py --server gunicorn   # or --server uvicorn

It creates and drops its own database, ``iso_helper_d_bench``, and flushes Redis db 12.
Bounded: every client stops at ``--max-seconds``; only 127.0.0.1 is ever contacted.
"""

import argparse
import collections
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.claude import FakeClaude, canaries_in  # noqa: E402

DB = os.environ.get("BENCH_DB", "iso_helper_d_bench")
REDIS_DB = os.environ.get("BENCH_REDIS_DB", "12")
ENDED = {"completed", "suppressed", "failed"}
HEALTH_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env(fake_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "isolation_site.settings",
        "DEBUG": "0",
        "SECURE_HTTPS": "off",
        "SECRET_KEY": "bench",
        "ENCRYPTION_KEYS": "rP0RmBBqN7Yx7PrwnWbJ1dGPLmVZ8kxAqV8VwK9xG2c=",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "CACHE_KEY_PREFIX": "bench",
        "ANTHROPIC_API_KEY": "bench",
        "ANTHROPIC_BASE_URL": fake_url,
        # Never reached, and per second: DRF's throttle keeps a user's request times over
        # the rate's period, so per minute a busy bench user's list (thousands of entries,
        # read and written whole each post) would cost far more than at the default 60/min.
        "CHAT_THROTTLE_RATE": "1000000/s",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def django_script(env: dict[str, str], script: str) -> str:
    """Run ``script`` in ``manage.py shell``; return its last line of output."""
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def prepare(env: dict[str, str], users: int, sessions_each: int = 1) -> list[dict]:
    """A fresh database and Redis db; ``users`` users, each with a token and sessions."""
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    script = (
        "import json;from django.contrib.auth.models import User;"
        "from sessions_app.tokens import auth_token_issue;"
        "from sessions_app.services import chat_session_create;out=[]\n"
        f"for i in range({users}):\n"
        " u=User.objects.create_user(f'bench{i}');key,_=auth_token_issue(user=u)\n"
        f" out.append(dict(user=i,token=key,sessions=[str(chat_session_create(owner=u).pk)"
        f" for _ in range({sessions_each})]))\n"
        "print(json.dumps(out))"
    )
    return json.loads(django_script(env, script))


def drop(env: dict[str, str]) -> None:
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB], check=False)
    subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=False, stdout=subprocess.DEVNULL)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def web_command(server: str, port: int, workers: int = 2) -> list[str]:
    if server == "gunicorn":
        # API.md's command line, only the port is the bench's own (8000 may be taken). It
        # runs from the repo root, so gunicorn reads ./gunicorn.conf.py as in production.
        argv = [sys.executable, "-m", "gunicorn", "isolation_site.wsgi"]
        return argv + [
            *("-b", f"127.0.0.1:{port}", "-w", "4", "-k", "gthread"),
            *("--threads", "8", "--timeout", "90"),
        ]
    argv = [sys.executable, "-m", "uvicorn", "isolation_site.asgi:application"]
    return argv + ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=raise_fd_limit,
        )


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def wait_healthy(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(HEALTH_REQUEST)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the web server on port {port} did not become healthy")


def wait_worker_ready(log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b" ready." in log.read_bytes():
            return
        time.sleep(0.5)
    raise SystemExit(f"the Celery worker did not start:\n{log.read_text()[-3000:]}")


class Tally:
    """What the clients saw, counted under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: list[str] = []

    def add(self, key: str, sample: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if sample and len(self.samples) < 20:
                self.samples.append(f"{key}: {sample}")


def client(user: dict, args, port: int, deadline: float, tally: Tally) -> None:
    """Post ``args.turns`` turns one after the other on one kept-alive connection."""
    http = urllib3.HTTPConnectionPool(
        "127.0.0.1",
        port,
        maxsize=1,
        block=True,
        retries=False,
        timeout=urllib3.Timeout(connect=30, read=args.wait + 60),
    )
    headers = {"Authorization": f"Token {user['token']}", "Content-Type": "application/json"}
    session = user["sessions"][0]
    mine = f"CANARY-u{user['user']}-"

    def call(method: str, path: str, body: dict | None = None):
        try:
            return http.request(
                method, path, body=json.dumps(body) if body else None, headers=headers
            )
        except urllib3.exceptions.ProtocolError as exc:  # reset, or closed mid-answer
            tally.add("resets", f"{method} {path}: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - counted, the client goes on
            tally.add("client errors", f"{method} {path}: {exc!r}")
        return None

    for n in range(args.turns):
        canary = f"{mine}t{n}"
        turn = None
        while turn is None and time.monotonic() < deadline:
            response = call(
                "POST",
                f"/api/v1/sessions/{session}/messages/?wait={args.wait}",
                {"content": f"{canary} please echo"},
            )
            if response is None:
                time.sleep(0.5)
                continue
            tally.add(f"POST {response.status}")
            if response.status in (200, 202):
                turn = response.json()
            elif response.status in (409, 429, 503):
                time.sleep(float(response.headers.get("Retry-After") or 1))
            else:
                tally.add("errors", f"POST {response.status} {response.data[:200]!r}")
                time.sleep(1)
        while turn is not None and turn["status"] not in ENDED:
            if time.monotonic() >= deadline:
                return
            time.sleep(args.poll_interval)
            response = call("GET", f"/api/v1/turns/{turn['id']}/")
            if response is not None:
                tally.add(f"poll {response.status}")
                if response.status == 200:
                    turn = response.json()
                elif response.status not in (429, 503):
                    tally.add("errors", f"GET turn {response.status} {response.data[:200]!r}")
        if turn is None:
            return
        tally.add(f"turns {turn['status']}")
        time.sleep(args.think)
        reply = (turn.get("reply") or {}).get("content") or ""
        others = {c for c in canaries_in(reply) if not c.startswith(mine)}
        if turn["status"] == "completed" and (canary not in reply or others):
            tally.add("foreign or missing canary", f"{canary}: {reply[:200]!r}")


def drive(users: list[dict], args, port: int) -> tuple[Tally, float]:
    tally = Tally()
    deadline = time.monotonic() + args.max_seconds
    threads = [
        threading.Thread(target=client, args=(user, args, port, deadline, tally), daemon=True)
        for user in users
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0) + 90)
    return tally, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("gunicorn", "uvicorn"), default="gunicorn")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--wait", type=int, default=30)
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, help="seconds between polls after a 202"
    )
    parser.add_argument("--think", type=float, default=0.0, help="seconds between two turns")
    parser.add_argument("--celery-concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=1200)
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database after")
    args = parser.parse_args()
    raise_fd_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what it started
    port = free_port()
    logs = Path(os.environ.get("BENCH_LOG_DIR", "/tmp")) / f"many_users-{args.server}"
    logs.mkdir(parents=True, exist_ok=True)
    with FakeClaude() as fake:
        env = bench_env(fake.url)
        users = prepare(env, args.users)
        worker_log = logs / "celery.log"
        procs = [
            start(web_command(args.server, port), env, logs / "web.log"),
            start(
                [sys.executable, "-m", "celery", "-A", "isolation_site", "worker"]
                + ["-P", "threads", "-c", str(args.celery_concurrency), "-l", "warning"]
                + ["--without-gossip", "--without-mingle", "--without-heartbeat"],
                env,
                worker_log,
            ),
        ]
        try:
            wait_healthy(port)
            time.sleep(3)  # the Celery worker connects
            tally, seconds = drive(users, args, port)
        finally:
            stop(procs)
            if not args.keep_db:
                drop(env)
    counts = tally.counts
    done = sum(v for k, v in counts.items() if k.startswith("turns "))
    print(
        f"server={args.server} users={args.users} turns={args.turns} wait={args.wait} "
        f"poll={args.poll_interval}s think={args.think}s"
    )
    print(
        f"turns ended {done} of {args.users * args.turns} in {seconds:.1f} s "
        f"({done / seconds:.1f} turns/s)"
    )
    for key in sorted(counts):
        print(f"  {key:28} {counts[key]}")
    for key in ("resets", "client errors", "errors", "foreign or missing canary"):
        print(f"  {key:28} {counts.get(key, 0)}")
    for sample in tally.samples:
        print("  sample", sample)
    print(f"logs in {logs}")
    ok = done == args.users * args.turns and not any(
        counts.get(k) for k in ("resets", "client errors", "errors", "foreign or missing canary")
    )
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
