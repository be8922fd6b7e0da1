"""Users: records, roles and password checks."""

from __future__ import annotations

import logging
from typing import Any

import psycopg2.errors
from werkzeug.security import check_password_hash, generate_password_hash

from records import audit, sessions
from records.db import Database

logger = logging.getLogger(__name__)

ROLES = ("admin", "trainer", "analyst")
# scrypt with werkzeug's defaults (n=2**15, r=8, p=1): slow enough to make stolen hashes expensive.
PASSWORD_METHOD = "scrypt"
# Checked against when the username is unknown, so a miss costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("clara-no-such-user", method=PASSWORD_METHOD)
# token_version goes into every token; it is never shown (the schemas do not name it).
_USER_COLUMNS = sessions.USER_COLUMNS


class UsernameTaken(ValueError):
    """Another user already has this username."""


def hash_password(password: str) -> str:
    """Hash a password for storage."""
    return generate_password_hash(password, method=PASSWORD_METHOD)


def create_user(db: Database, username: str, password: str, role: str,
                audit_entry: audit.Entry | None = None) -> dict[str, Any]:
    """Store a new user and return it without its hash."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    try:
        with db.transaction() as cur:
            cur.execute(
                f"INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s) RETURNING {_USER_COLUMNS}",
                (username, hash_password(password), role),
            )
            user = dict(cur.fetchone())
            if audit_entry is not None:
                audit.write(cur, audit_entry, object_id=user["id"])
    except psycopg2.errors.UniqueViolation:
        raise UsernameTaken(username) from None
    logger.info("Created user %s with role %s.", username, role)
    return user


def get_user(db: Database, user_id: int) -> dict[str, Any] | None:
    """Return the user with this id, or None."""
    with db.transaction() as cur:
        cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
        row = cur.fetchone()
    return dict(row) if row else None


def set_disabled(db: Database, user_id: int, disabled: bool,
                 audit_entry: audit.Entry | None = None) -> dict[str, Any] | None:
    """Disable or enable a user and return it, or None when no user has this id.

    Either change ends the user's sessions, so that re-enabling a user does not revive the tokens it had.
    """
    with db.transaction() as cur:
        cur.execute("SELECT disabled FROM users WHERE id = %s FOR UPDATE", (user_id,))
        before = cur.fetchone()
        if before is None:
            return None
        cur.execute(f"UPDATE users SET disabled = %s WHERE id = %s RETURNING {_USER_COLUMNS}", (disabled, user_id))
        row = cur.fetchone()
        if before["disabled"] != disabled:
            row = sessions.end_all(cur, user_id, "disabled" if disabled else "enabled")
        if audit_entry is not None:
            audit.write(cur, audit_entry)
    logger.info("User %s is now %s.", row["username"], "disabled" if disabled else "enabled")
    return dict(row)


def check_password(db: Database, user_id: int, password: str) -> bool:
    """Whether password is the user's current one."""
    with db.transaction() as cur:
        cur.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,))
        row = cur.fetchone()
    if row is None:
        check_password_hash(_DUMMY_HASH, password)
        return False
    return check_password_hash(row["password_hash"], password)


def set_password(db: Database, user_id: int, password: str, reason: str,
                 audit_entry: audit.Entry | None = None) -> dict[str, Any] | None:
    """Store a new password and end every session of the user; the user, or None when no user has this id."""
    password_hash = hash_password(password)
    with db.transaction() as cur:
        cur.execute("UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id))
        if cur.rowcount == 0:
            return None
        user = sessions.end_all(cur, user_id, reason)
        if audit_entry is not None:
            audit.write(cur, audit_entry)
    logger.info("The password of user %s was %s; their sessions ended.", user["username"],
                "changed" if reason == "password_change" else "reset")
    return user


def user_id_of(db: Database, username: str) -> int | None:
    """The id of the user with this username, or None."""
    with db.transaction() as cur:
        cur.execute("SELECT id FROM users WHERE username = %s", (username,))
        row = cur.fetchone()
    return row["id"] if row else None


def list_users(db: Database, *, limit: int, after: int | None) -> tuple[list[dict[str, Any]], bool]:
    """Return a page of users in creation order and whether more follow."""
    with db.transaction() as cur:
        cur.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s",
            (after or 0, limit + 1),
        )
        rows = [dict(row) for row in cur.fetchall()]
    return rows[:limit], len(rows) > limit


def authenticate(db: Database, username: str, password: str) -> dict[str, Any] | None:
    """Return the enabled user with these credentials, or None."""
    with db.transaction() as cur:
        cur.execute(f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE username = %s", (username,))
        row = cur.fetchone()
    if row is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(row["password_hash"], password) or row["disabled"]:
        return None
    user = dict(row)
    del user["password_hash"]
    return user


def bootstrap_admin(db: Database, password: str) -> bool:
    """Create user admin when no user exists yet; True if it was created."""
    with db.transaction() as cur:
        # Several API processes may start at once; the lock makes exactly one of them create admin.
        cur.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
        cur.execute("SELECT EXISTS (SELECT 1 FROM users) AS any")
        if cur.fetchone()["any"]:
            return False
        cur.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('admin', %s, 'admin')",
            (hash_password(password),),
        )
    logger.info("Created the first user, admin, from CLARA_BOOTSTRAP_ADMIN_PASSWORD.")
    return True
