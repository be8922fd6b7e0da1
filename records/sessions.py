"""Login sessions in PostgreSQL: which refresh token of a session is current, and which sessions are revoked."""

from __future__ import annotations

import functools
import logging
import uuid
from datetime import datetime
from typing import Any

from records import jobs
from records.db import Database, execute_prepared

logger = logging.getLogger(__name__)

USER_COLUMNS = "id, username, role, disabled, created_at, token_version"
# The one query every authenticated request costs: the user, its token version and the token's session.
_TOKEN_STATE = (
    "SELECT u.id, u.username, u.role, u.disabled, u.created_at, u.token_version,"
    " s.sid IS NOT NULL AND s.revoked_at IS NULL AS session_live"
    " FROM users u LEFT JOIN auth_sessions s ON s.sid = $1 AND s.user_id = u.id"
    " WHERE u.id = $2"
)


# The same, with the job a status poll asks for in the same round trip: the job as records.jobs.get_job reads it,
# if the token's user may see it as stored now (trainers only their own jobs). The user is `me` here, as the
# job's own FROM names its owner `u`. The job's columns and FROM are records.jobs' own, so both queries answer
# the same row.
_TOKEN_STATE_AND_JOB = (
    "SELECT me.id, me.username, me.role, me.disabled, me.created_at, me.token_version,"
    " s.sid IS NOT NULL AND s.revoked_at IS NULL AS session_live, job.*"
    " FROM users me LEFT JOIN auth_sessions s ON s.sid = $1 AND s.user_id = me.id"
    f" LEFT JOIN LATERAL (SELECT {jobs._JOB_COLUMNS} FROM {jobs._JOB_FROM}"
    "  WHERE j.id = $3 AND (me.role <> 'trainer' OR j.owner_id = me.id)) job ON true"
    " WHERE me.id = $2"
)
_STATE_COLUMNS = 7


def token_state_and_job(db: Database, user_id: int, sid: str | None, job_id: uuid.UUID
                        ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """token_state, and the job as get_job(job_id, owner_id=the user if a trainer) returns it or None: one query."""
    with db.read() as cur:
        execute_prepared(cur, _TOKEN_STATE_AND_JOB, (sid, user_id, job_id))
        names, row = cur.fetchone_with_names()
    if row is None:
        return None, None
    state = dict(zip(names[:_STATE_COLUMNS], row[:_STATE_COLUMNS], strict=True))
    # The job's id is its primary key: NULL only when the LEFT JOIN found no job the user may see.
    job = dict(zip(names[_STATE_COLUMNS:], row[_STATE_COLUMNS:], strict=True)) if row[_STATE_COLUMNS] else None
    return state, job


@functools.cache
def _token_state_and_page_query(status: bool, after: bool) -> str:
    """_TOKEN_STATE with a page of jobs as records.jobs.list_jobs reads it, for the user as stored now.

    $1 sid, $2 user id, $3 the page size + 1, then the cursor's job id (with `after`), then the status (with
    `status`). One row per job of the page (the token state repeated on each), or one row with NULL job columns
    for an empty page; none when no user has this id. `cursor_found` is false when `after` names no job the user
    may see, as list_jobs's UnknownCursor. Trainers' and others' pages are two branches with one-time filters, so
    a trainer's page still walks the owner's index rather than every job.
    """
    conditions, cursor_join, cursor_found, number = [], "", "true", 3
    if after:
        number += 1
        cursor_join = (f" LEFT JOIN training_jobs cursor_job ON cursor_job.id = ${number}"
                       " AND (me.role <> 'trainer' OR cursor_job.owner_id = me.id)")
        cursor_found = "cursor_job.id IS NOT NULL"
        # NULL (so no rows) when the cursor names no visible job.
        conditions.append("(j.created_at, j.id) < (cursor_job.created_at, cursor_job.id)")
    if status:
        number += 1
        conditions.append(f"j.status = ${number}")

    def branch(visible: str) -> str:
        where = " AND ".join([visible, *conditions])
        return (f"(SELECT {jobs._JOB_COLUMNS} FROM {jobs._JOB_FROM} WHERE {where}"
                " ORDER BY j.created_at DESC, j.id DESC LIMIT $3)")

    trainers, others = branch("me.role = 'trainer' AND j.owner_id = me.id"), branch("me.role <> 'trainer'")
    return (
        "SELECT me.id, me.username, me.role, me.disabled, me.created_at, me.token_version,"
        f" s.sid IS NOT NULL AND s.revoked_at IS NULL AS session_live, {cursor_found} AS cursor_found, job.*"
        f" FROM users me LEFT JOIN auth_sessions s ON s.sid = $1 AND s.user_id = me.id{cursor_join}"
        f" LEFT JOIN LATERAL ({trainers} UNION ALL {others}) job ON true"
        " WHERE me.id = $2 ORDER BY job.created_at DESC, job.id DESC"
    )


def token_state_and_page(db: Database, user_id: int, sid: str | None, *, status: str | None, limit: int,
                         after: uuid.UUID | None
                         ) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None, bool]:
    """token_state, and the page and has_more that list_jobs(owner_id=the user if a trainer) returns: one query.

    The page is None when `after` names no job the user may see (list_jobs raises UnknownCursor then).
    """
    params: list[Any] = [sid, user_id, limit + 1]
    if after is not None:
        params.append(after)
    if status is not None:
        params.append(status)
    with db.read() as cur:
        execute_prepared(cur, _token_state_and_page_query(status is not None, after is not None), params)
        names, rows = cur.fetchall_with_names()
    if not rows:
        return None, None, False
    first = rows[0]
    state = dict(zip(names[:_STATE_COLUMNS], first[:_STATE_COLUMNS], strict=True))
    if not first[_STATE_COLUMNS]:
        return state, None, False
    job_names = names[_STATE_COLUMNS + 1:]
    # A job's id is its primary key: NULL only in the one row of an empty page.
    page = [dict(zip(job_names, row[_STATE_COLUMNS + 1:], strict=True))
            for row in rows if row[_STATE_COLUMNS + 1] is not None]
    return state, page[:limit], len(page) > limit


def token_state(db: Database, user_id: int, sid: str | None) -> dict[str, Any] | None:
    """The user with its token_version and whether the session sid is live, or None when no user has this id."""
    # One prepared statement on an autocommit connection: no BEGIN and COMMIT round trips, and PostgreSQL
    # parses and plans it once per connection rather than on every request.
    with db.read() as cur:
        execute_prepared(cur, _TOKEN_STATE, (sid, user_id))
        row = cur.fetchone()
    return row


def start(db: Database, sid: str, user_id: int, refresh_jti: str, expires_at: datetime) -> None:
    """Record a new session whose current refresh token is refresh_jti; forget the user's expired sessions."""
    with db.transaction() as cur:
        # Pruned here, per user, so the table stays as small as the number of live logins.
        cur.execute("DELETE FROM auth_sessions WHERE user_id = %s AND expires_at < now()", (user_id,))
        cur.execute("INSERT INTO auth_sessions (sid, user_id, refresh_jti, expires_at) VALUES (%s, %s, %s, %s)",
                    (sid, user_id, refresh_jti, expires_at))


def rotate(db: Database, sid: str, old_jti: str, new_jti: str, expires_at: datetime) -> bool:
    """Make new_jti the session's refresh token if old_jti still is; False when it is not (or was revoked)."""
    with db.transaction() as cur:
        # One statement: of two concurrent refreshes with one token, the second waits for the first's row
        # lock, then finds refresh_jti changed and updates nothing.
        cur.execute(
            "UPDATE auth_sessions SET refresh_jti = %s, refreshed_at = now(), expires_at = %s"
            " WHERE sid = %s AND refresh_jti = %s AND revoked_at IS NULL RETURNING sid",
            (new_jti, expires_at, sid, old_jti),
        )
        return cur.fetchone() is not None


def revoke(db: Database, user_id: int, sids: list[str], reason: str) -> int:
    """Revoke these sessions of the user; the number revoked now (already revoked ones are not counted)."""
    with db.transaction() as cur:
        return revoke_in(cur, user_id, sids, reason)


def revoke_in(cur, user_id: int, sids: list[str] | None, reason: str) -> int:
    """Revoke the user's sessions (all of them when sids is None) inside the caller's transaction."""
    cur.execute(
        "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = %s"
        " WHERE user_id = %s AND revoked_at IS NULL AND (%s::text[] IS NULL OR sid = ANY(%s::text[]))",
        (reason, user_id, sids, sids),
    )
    return cur.rowcount


def end_all(cur, user_id: int, reason: str) -> dict[str, Any] | None:
    """End every session of the user: bump its token version and revoke its sessions; the user, or None."""
    cur.execute(f"UPDATE users SET token_version = token_version + 1 WHERE id = %s RETURNING {USER_COLUMNS}",
                (user_id,))
    row = cur.fetchone()
    if row is not None:
        revoke_in(cur, user_id, None, reason)
    return dict(row) if row else None
