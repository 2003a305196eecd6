#!/usr/bin/env bash
# What merging statements saves: three INSERTs like a turn's accept (a turn, its message, its
# audit row) as three statements, then as one (a CTE), in one transaction each, alternated
# three times with pgbench; CPU of the whole machine (Postgres and pgbench) per transaction.
# Usage: bash bench/statement_merge.sh [seconds per run, default 10]. Uses its own database.
set -euo pipefail
secs=${1:-10}
db=bench_statement_merge
pg=(-h 127.0.0.1 -U postgres)
dropdb "${pg[@]}" --if-exists "$db" && createdb "${pg[@]}" "$db"
psql "${pg[@]}" -d "$db" -q <<'SQL'
CREATE TABLE turn (id uuid PRIMARY KEY, session_id uuid NOT NULL, status text NOT NULL,
  attempts int NOT NULL DEFAULT 0, created_at timestamptz NOT NULL, deadline_at timestamptz);
CREATE INDEX ON turn (session_id);
CREATE TABLE message (id bigserial PRIMARY KEY, session_id uuid NOT NULL,
  turn_id uuid NOT NULL REFERENCES turn (id), seq bigint NOT NULL, role text NOT NULL,
  content text NOT NULL, created_at timestamptz NOT NULL);
CREATE INDEX ON message (session_id, seq); CREATE INDEX ON message (turn_id);
CREATE TABLE audit (id bigserial PRIMARY KEY, kind text, user_id int, session_id uuid,
  turn_id uuid, role text, content_hash text, token_count int, created_at timestamptz NOT NULL);
CREATE INDEX ON audit (session_id); CREATE INDEX ON audit (created_at);
SQL
dir=$(mktemp -d)
trap 'rm -rf "$dir"; dropdb "${pg[@]}" --if-exists "$db"' EXIT
# Wide enough that two runs never draw the same turn id.
keys='\set s random(1, 9000000000000000)'
cat > "$dir/three.sql" <<SQL
$keys
BEGIN;
INSERT INTO turn (id, session_id, status, created_at, deadline_at) VALUES (md5(:s::text || 't')::uuid, md5(:s::text)::uuid, 'pending', now(), now());
INSERT INTO message (session_id, turn_id, seq, role, content, created_at) VALUES (md5(:s::text)::uuid, md5(:s::text || 't')::uuid, 1, 'user', 'hello there, how are you', now()) RETURNING id, created_at;
INSERT INTO audit (kind, user_id, session_id, turn_id, role, content_hash, token_count, created_at) VALUES ('message', 1, md5(:s::text)::uuid, md5(:s::text || 't')::uuid, 'user', 'abcdef', 5, now()) RETURNING id;
COMMIT;
SQL
cat > "$dir/one.sql" <<SQL
$keys
BEGIN;
WITH t AS (INSERT INTO turn (id, session_id, status, created_at, deadline_at) VALUES (md5(:s::text || 't')::uuid, md5(:s::text)::uuid, 'pending', now(), now()) RETURNING id), m AS (INSERT INTO message (session_id, turn_id, seq, role, content, created_at) SELECT md5(:s::text)::uuid, t.id, 1, 'user', 'hello there, how are you', now() FROM t RETURNING id, created_at), a AS (INSERT INTO audit (kind, user_id, session_id, turn_id, role, content_hash, token_count, created_at) SELECT 'message', 1, md5(:s::text)::uuid, t.id, 'user', 'abcdef', 5, now() FROM t RETURNING id) SELECT m.id, m.created_at, a.id FROM m, a;
COMMIT;
SQL
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
hz=$(getconf CLK_TCK)
for round in 1 2 3; do
  for script in three one; do
    before=$(busy)
    out=$(pgbench "${pg[@]}" -n -M prepared -c 2 -j 1 -T "$secs" -f "$dir/$script.sql" "$db" 2>&1)
    after=$(busy)
    if grep -q "aborted" <<<"$out"; then echo "$out" >&2; exit 1; fi
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    ms=$(awk -v t="$((after - before))" -v n="$tx" -v hz="$hz" 'BEGIN {printf "%.3f", t * 1000 / hz / n}')
    echo "round $round, $script statement(s): $tx transactions, $tps tps, $ms ms CPU per transaction"
  done
done
