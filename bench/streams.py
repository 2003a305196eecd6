"""One uvicorn worker holds many event streams at once, each waiting without a thread.

Starts one uvicorn worker (``--workers 1``) on Postgres and Redis, creates ``--streams``
pending turns (``--users`` users, one session per turn), opens every turn's event stream
at once (asyncio, raw HTTP/1.1 on 127.0.0.1) and waits for each first event. Then it
reports how many opened, and the worker's resident memory and thread count; ends every
turn (running, then completed, as a worker would: each change is published) and checks
that every stream received its own turn's events, the terminal one last, and closed.
Usage (from the repo root, Postgres and Redis running):

    .venv/bin/python bench/streams.py [--streams 1000] [--users 125]

It creates and drops its own database, ``iso_helper_d_bench``, and flushes Redis db 12.
No Celery worker runs: nothing is queued, the bench ends the turns itself.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.many_users import (  # noqa: E402
    bench_env,
    django_script,
    drop,
    free_port,
    prepare,
    raise_fd_limit,
    start,
    stop,
    wait_healthy,
)

OPEN_TIMEOUT_SECONDS = 120
END_TIMEOUT_SECONDS = 180


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


class Stream:
    """One event stream: the events it received and how it ended."""

    def __init__(self, turn: str, token: str) -> None:
        self.turn = turn
        self.token = token
        self.events: list[dict] = []
        self.status = 0
        self.first = asyncio.Event()
        self.ended_cleanly = False
        self.error = ""

    async def run(self, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        except OSError as exc:
            self.error = f"connect: {exc!r}"
            self.first.set()
            return
        try:
            writer.write(
                f"GET /api/v1/turns/{self.turn}/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Token {self.token}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                self.error = head.decode(errors="replace")[:200]
                return
            await self._read_chunks(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.error = repr(exc)
        finally:
            self.first.set()
            writer.close()

    async def _read_chunks(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                self.ended_cleanly = True
                return
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))
                    self.first.set()


async def open_all(streams: list[Stream], port: int) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(stream.run(port)) for stream in streams]
    await asyncio.wait_for(
        asyncio.gather(*(stream.first.wait() for stream in streams)), OPEN_TIMEOUT_SECONDS
    )
    return tasks


def end_turns(env: dict[str, str], turns: list[str]) -> None:
    script = (
        "import json,sys;from sessions_app import services\n"
        f"for t in {json.dumps(turns)}:\n"
        " services.turn_claim(turn_id=t)\n"
        "for t in "
        f"{json.dumps(turns)}:\n"
        " services.turn_complete(turn_id=t, reply='done '+t)\n"
        "print('ended')"
    )
    django_script(env, script)


async def bench(args, env: dict[str, str], port: int, pid: int, plan: list[tuple[str, str]]):
    streams = [Stream(turn, token) for turn, token in plan]
    started = time.monotonic()
    tasks = await open_all(streams, port)
    opened = [s for s in streams if s.status == 200 and s.events]
    print(f"opened {len(opened)} of {len(streams)} streams in {time.monotonic() - started:.1f} s")
    await asyncio.sleep(2)  # let the worker settle
    status = proc_status(pid)
    print(f"uvicorn worker: VmRSS {status['VmRSS']}, threads {status['Threads']}")
    refused = [s for s in streams if s.status != 200]
    if refused:
        print(f"refused: {len(refused)}, e.g. {refused[0].status} {refused[0].error}")
    started = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(
        None, end_turns, env, [turn for turn, _ in plan]
    )
    await asyncio.wait_for(asyncio.gather(*tasks), END_TIMEOUT_SECONDS)
    print(f"ended every turn; streams done {time.monotonic() - started:.1f} s later")
    status = proc_status(pid)
    print(f"uvicorn worker after: VmRSS {status['VmRSS']}, threads {status['Threads']}")
    return streams


def check(streams: list[Stream]) -> bool:
    bad = []
    for stream in streams:
        statuses = [event["status"] for event in stream.events]
        own = all(event["id"] == stream.turn for event in stream.events)
        reply = (stream.events[-1].get("reply") or {}).get("content") if stream.events else None
        if not (
            stream.ended_cleanly
            and own
            and statuses
            and statuses[0] == "pending"
            and statuses[-1] == "completed"
            and reply == f"done {stream.turn}"
        ):
            bad.append((stream.turn, statuses, own, stream.ended_cleanly, stream.error))
    print(f"streams with their own terminal event and a clean end: {len(streams) - len(bad)}")
    for sample in bad[:10]:
        print("  bad:", sample)
    return not bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--users", type=int, default=125)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what it started
    per_user = -(-args.streams // args.users)
    port = free_port()
    logs = Path(os.environ.get("BENCH_LOG_DIR", "/tmp")) / "streams"
    logs.mkdir(parents=True, exist_ok=True)
    env = bench_env("http://127.0.0.1:9", MAX_WAITS_PER_USER=str(per_user))
    users = prepare(env, args.users, sessions_each=per_user)
    owned = [(sid, n, u["token"]) for n, u in enumerate(users) for sid in u["sessions"]]
    owned = owned[: args.streams]
    script = (
        "import json;from django.contrib.auth.models import User;"
        "from sessions_app.services import message_accept;out=[]\n"
        f"for sid, n in {json.dumps([(sid, n) for sid, n, _ in owned])}:\n"
        " u=User.objects.get(username=f'bench{n}')\n"
        " out.append(str(message_accept(user=u, session_id=sid, content=f'hold {sid}').pk))\n"
        "print(json.dumps(out))"
    )
    turns = json.loads(django_script(env, script))
    plan = [(turn, token) for turn, (_, _, token) in zip(turns, owned, strict=True)]
    argv = [sys.executable, "-m", "uvicorn", "isolation_site.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--log-level", "warning", "--backlog", "4096"]
    proc = start(argv, env, logs / "uvicorn.log")
    try:
        wait_healthy(port)
        streams = asyncio.run(bench(args, env, port, proc.pid, plan))
    finally:
        stop([proc])
        if not args.keep_db:
            drop(env)
    ok = check(streams)
    print(f"logs in {logs}")
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
