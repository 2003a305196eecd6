"""Chat-turn throughput against the bare DRF endpoint, on real services.

Starts the fake Claude server (no delay), gunicorn (WSGI, gthread) and Celery workers on
Postgres and Redis, then drives both endpoints with concurrent clients for a fixed time
and prints requests per second. Usage (from the repo root, services running):

    .venv/bin/python bench/turn_throughput.py [--seconds 20] [--clients 16]

It creates and drops its own database, ``isolation_bench``, and uses Redis db 15.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.claude import FakeClaude  # noqa: E402

DB = "isolation_bench"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


def sh(*args: str, env: dict[str, str]) -> None:
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def prepare(env: dict[str, str], users: int) -> list[tuple[str, str]]:
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    subprocess.run(["redis-cli", "-n", "15", "flushdb"], check=True, stdout=subprocess.DEVNULL)
    sh(sys.executable, "manage.py", "migrate", "-v", "0", env=env)
    script = (
        "import json;from django.contrib.auth.models import User;"
        "from sessions_app.tokens import auth_token_issue;"
        "from sessions_app.services import chat_session_create;out=[]\n"
        f"for i in range({users}):\n"
        " u=User.objects.create_user(f'bench{i}');key,_=auth_token_issue(user=u)\n"
        " out.append((key, str(chat_session_create(owner=u).pk)))\n"
        "print(json.dumps(out))"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [tuple(pair) for pair in json.loads(out.strip().splitlines()[-1])]


def drive(path_for, users: list[tuple[str, str]], seconds: float) -> tuple[int, int]:
    http = urllib3.PoolManager(maxsize=len(users), retries=False, timeout=60)
    done, errors = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(token: str, session: str) -> None:
        while time.monotonic() < deadline:
            response = http.request(
                "POST",
                BASE + path_for(session),
                body=json.dumps({"content": f"hello {uuid.uuid4()}"}),
                headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
            )
            with lock:
                if response.status in (200, 201):
                    done[0] += 1
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=pair) for pair in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0], errors[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--celery-concurrency", type=int, default=8)
    args = parser.parse_args()
    with FakeClaude() as fake:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DEBUG": "0",
            "SECURE_HTTPS": "0",
            "SECRET_KEY": "bench",
            "ENCRYPTION_KEYS": "rP0RmBBqN7Yx7PrwnWbJ1dGPLmVZ8kxAqV8VwK9xG2c=",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
            "REDIS_URL": "redis://127.0.0.1:6379/15",
            "ANTHROPIC_API_KEY": "bench",
            "ANTHROPIC_BASE_URL": fake.url,
            "CHAT_THROTTLE_RATE": "1000000/min",
            "LOG_LEVEL": "WARNING",
        }
        users = prepare(env, args.clients)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "isolation_site.wsgi",
                    "-b",
                    f"127.0.0.1:{PORT}",
                    "-w",
                    str(args.web_workers),
                    "-k",
                    "gthread",
                    "--threads",
                    "8",
                    "--timeout",
                    "90",
                    "--log-level",
                    "warning",
                    "--env",
                    "DJANGO_SETTINGS_MODULE=bench.settings",
                ],
                cwd=ROOT,
                env=env,
            ),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "isolation_site",
                    "worker",
                    "-P",
                    "threads",
                    "-c",
                    str(args.celery_concurrency),
                    "-l",
                    "warning",
                    "--without-gossip",
                    "--without-mingle",
                ],
                cwd=ROOT,
                env=env,
            ),
        ]
        try:
            time.sleep(6)
            bare_done, bare_err = drive(lambda s: f"/bench/bare/{s}/", users, args.seconds)
            turn_done, turn_err = drive(
                lambda s: f"/api/v1/sessions/{s}/messages/?wait=30", users, args.seconds
            )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    bare, turns = bare_done / args.seconds, turn_done / args.seconds
    print(
        f"clients={args.clients} seconds={args.seconds} web_workers={args.web_workers} "
        f"celery_threads={args.celery_concurrency}"
    )
    print(f"bare DRF endpoint : {bare:8.1f} req/s  ({bare_err} errors)")
    print(
        f"chat turn (?wait) : {turns:8.1f} turns/s ({turn_err} errors, "
        f"{fake.request_count()} Claude calls)"
    )
    print(f"ratio             : {turns / bare:8.3f}  (goal: at least 0.333)")


if __name__ == "__main__":
    main()
