"""Jobs with an idempotency key (farm.reliability.idempotency): the unique index
ux_jobs_idempotency (tenant, idempotency_key) decides who holds a key, never a read before
the write. A keyed row goes in with ``INSERT … ON CONFLICT (tenant, idempotency_key) WHERE
idempotency_key IS NOT NULL DO NOTHING RETURNING id``; when nothing comes back, the key's
holder is read (a concurrent insert of the same key waits for the other transaction, then
finds its row) and the request hashes decide: the same job, or a conflict.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import Connection

from farm.jobs import JobRequest, Route
from farm.reliability.idempotency import Holder, request_hash, resolve
from farm.store.db import Database, scalars
from farm.store.jobs import column, new_job_row, row_params
from farm.store.jobs import insert_jobs as insert_unkeyed

HOLDERS_SQL = (
    "SELECT j.tenant, j.idempotency_key, j.id, j.request_hash FROM jobs j "
    "JOIN unnest(CAST(%(tenants)s AS text[]), CAST(%(keys)s AS text[])) AS k(tenant, key) "
    "ON j.tenant = k.tenant AND j.idempotency_key = k.key"
)

# the keyed rows' statement: the unique index ux_jobs_idempotency decides who holds a key
KEYED_CONFLICT = ("ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL "
                  "DO NOTHING RETURNING id")
MAX_ROWS = 1000  # rows of one statement (each row's columns are parameters: 65,535 at most)


def _holders(conn: Connection[Any], wanted: Iterable[tuple[str, str]]
             ) -> dict[tuple[str, str], Holder]:
    """The jobs holding these (tenant, key) pairs, by pair: one query."""
    pairs = list(dict.fromkeys(wanted))
    if not pairs:
        return {}
    tenants, keys = zip(*pairs, strict=True)
    found = conn.execute(HOLDERS_SQL, {"tenants": list(tenants), "keys": list(keys)})
    return {(t, k): Holder(job_id, digest) for t, k, job_id, digest in found}


def _insert_keyed_rows(conn: Connection[Any], rows: Sequence[dict[str, Any]]
                       ) -> set[uuid.UUID]:
    """One multi-row ``INSERT … ON CONFLICT … DO NOTHING RETURNING id`` per MAX_ROWS rows,
    in the rows' order; their columns (the first row's, the same for all) are checked
    against the schema's (JOB_COLUMNS): no name from elsewhere reaches the SQL. Returns the
    ids inserted."""
    columns = [column(name) for name in rows[0]]
    inserted: set[uuid.UUID] = set()
    one_row = f"({', '.join(['%s'] * len(columns))})"
    for first in range(0, len(rows), MAX_ROWS):
        part = rows[first:first + MAX_ROWS]
        params: list[Any] = []
        for row in part:
            if row.keys() != set(columns):
                raise ValueError("the rows of one insert must have the same columns")
            values = row_params(row)
            params += [values[name] for name in columns]
        sql = (f"INSERT INTO jobs ({', '.join(columns)}) "
               f"VALUES {', '.join([one_row] * len(part))} {KEYED_CONFLICT}")
        inserted.update(scalars(conn.execute(sql, params)))
    return inserted


def insert_jobs(conn: Connection[Any], rows: Sequence[dict[str, Any]]
                ) -> dict[uuid.UUID, uuid.UUID]:
    """Record one transaction's rows: those without a key in one pipelined executemany
    (farm.store.jobs), the keyed ones in another statement (one per MAX_ROWS rows),
    ``INSERT … ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO
    NOTHING RETURNING id``, in (tenant, key) order (two transactions take the
    keys' index entries in the same order and never deadlock; a repeated key keeps its
    first row), then one read of the holders of the keys not inserted. Returns, by the id
    of each row not inserted, the id of the job holding its key (a row already there under
    its own id, a message delivered again, is not in it); a key held with a different
    request raises IdempotencyConflictError (the caller's transaction then writes nothing)."""
    plain = [row for row in rows if row["idempotency_key"] is None]
    insert_unkeyed(conn, plain)
    left = sorted((row for row in rows if row["idempotency_key"] is not None),
                  key=lambda row: (row["tenant"], row["idempotency_key"]))
    held: dict[uuid.UUID, uuid.UUID] = {}
    for _ in range(3):  # a holder gone between the two statements (jobs are not deleted)
        if not left:
            return held
        inserted = _insert_keyed_rows(conn, left)
        left = [row for row in left if row["id"] not in inserted]
        holders = _holders(conn, ((row["tenant"], row["idempotency_key"]) for row in left))
        again = []
        for row in left:
            tenant, key = row["tenant"], row["idempotency_key"]
            holder = holders.get((tenant, key))
            if holder is None:
                again.append(row)
            elif (job_id := resolve(key, tenant, row["request_hash"], holder)) != row["id"]:
                held[row["id"]] = job_id
        left = again
    raise RuntimeError("the holders of idempotency keys kept vanishing")


def insert_keyed(conn: Connection[Any], row: dict[str, Any]) -> uuid.UUID:
    """Record one keyed job's row unless its key is held (insert_jobs). Returns the job that
    has the key: the row's own id (inserted, or there already: a message delivered again),
    else the holder's, for the same request; IdempotencyConflictError for another."""
    if row["idempotency_key"] is None:
        raise ValueError("insert_keyed() is for a row with an idempotency_key")
    job_id: uuid.UUID = row["id"]
    return insert_jobs(conn, [row]).get(job_id, job_id)


def record(conn: Connection[Any], chunk: Sequence[tuple[uuid.UUID, tuple[JobRequest, Route]]],
           extra: Sequence[dict[str, Any]] = ()) -> list[uuid.UUID]:
    """Record routed jobs (their new ids given; ``extra``: more columns of each row, e.g. a
    batch job's) in the caller's transaction. Returns, for each, the job that is it: its own
    id, or the id of the job holding its key already with the same request (not inserted:
    nothing to publish). IdempotencyConflictError for a key held with a different request."""
    rows = [new_job_row(job_id, request, chosen) | (extra[n] if extra else {})
            for n, (job_id, (request, chosen)) in enumerate(chunk)]
    held = insert_jobs(conn, rows)
    return [held.get(row["id"], row["id"]) for row in rows]


def inserted(chunk: Sequence[tuple[uuid.UUID, Any]], taken: Sequence[uuid.UUID]
             ) -> list[tuple[uuid.UUID, Any]]:
    """The jobs of a recorded chunk that are new (``taken``: what ``record`` returned): the
    ones to publish; a job whose key was held already is published never again."""
    return [job for job, got in zip(chunk, taken, strict=True) if job[0] == got]


def check_held(db: Database, requests: Sequence[JobRequest]) -> None:
    """Before a batch's first row is written: IdempotencyConflictError for a request whose
    key is held already with a different request, so that nothing of the batch is enqueued
    (one held by a job recorded meanwhile is found at its insert). One query, none without
    keys."""
    wanted = {(r.tenant, r.idempotency_key): r for r in requests if r.idempotency_key}
    if not wanted:
        return
    with db.connect() as conn:
        holders = _holders(conn, wanted)
    for (tenant, key), holder in holders.items():
        resolve(key, tenant, request_hash(wanted[tenant, key]), holder)
