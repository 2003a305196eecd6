"""What Postgres did during a bench phase: statements (``pg_stat_statements``) and sessions.

``pg_stat_statements`` counts only where the server preloads it (``shared_preload_libraries
= 'pg_stat_statements'`` and a restart); without it the phase reports sessions alone.
Statements are those of the bench's own database; ``pg_stat_statements_reset()`` clears
every database's, so do not rely on its figures elsewhere while a bench runs.
"""

import subprocess
from dataclasses import dataclass, field

HOST = "127.0.0.1"


def _psql(db: str, sql: str) -> list[list[str]]:
    out = subprocess.run(
        ["psql", "-h", HOST, "-U", "postgres", "-d", db, "-AtF", "\t", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


@dataclass
class PgPhase:
    sessions: int  # connections Postgres accepted during the phase
    counted: bool  # whether pg_stat_statements counted the statements
    statements: list[tuple[int, float, str]] = field(default_factory=list)  # calls, ms, SQL

    def per_op(self, ops: int) -> tuple[float, float, float]:
        """Statements, execution ms and new connections per operation."""
        ops = max(ops, 1)
        calls = sum(c for c, _, _ in self.statements)
        ms = sum(t for _, t, _ in self.statements)
        return calls / ops, ms / ops, self.sessions / ops


class PgStats:
    def __init__(self, db: str) -> None:
        self.db = db
        try:
            _psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            _psql(db, "SELECT 1 FROM pg_stat_statements LIMIT 1")
            self.counted = True
        except subprocess.CalledProcessError:  # not preloaded: sessions only
            self.counted = False

    def _sessions(self) -> int:
        [[count]] = _psql(
            self.db, f"SELECT sessions FROM pg_stat_database WHERE datname = '{self.db}'"
        )
        return int(count)

    def start(self) -> None:
        if self.counted:
            _psql(self.db, "SELECT pg_stat_statements_reset()")
        self.started = self._sessions()

    def stop(self) -> PgPhase:
        # Left out: the bench's own psql sessions since ``start`` read the count (the
        # reset's, if any, and this read's: a session counts from its connection).
        own = 1 + self.counted
        phase = PgPhase(max(0, self._sessions() - self.started - own), self.counted)
        if self.counted:
            rows = _psql(
                self.db,
                "SELECT calls, total_exec_time, regexp_replace(query, '\\s+', ' ', 'g') "
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                f"WHERE d.datname = '{self.db}' AND query NOT LIKE '%pg_stat_%' "
                "ORDER BY total_exec_time DESC",
            )
            phase.statements = [(int(c), float(t), q) for c, t, q in rows]
        return phase
