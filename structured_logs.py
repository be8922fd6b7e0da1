"""Log lines that say which job and which user they are about, as text or as JSON objects."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"

# Context variables, not thread-locals: each request thread and each task has its own value.
_job_id: ContextVar[str | None] = ContextVar("clara_job_id", default=None)
_user: ContextVar[str | None] = ContextVar("clara_user", default=None)


@contextmanager
def about_job(job_id: object, user: object = None) -> Iterator[None]:
    """Tag every log line written inside the block with the job and, when known, its owner (or see set_user)."""
    job_token = _job_id.set(str(job_id))
    user_token = _user.set(str(user) if user is not None else None)
    try:
        yield
    finally:
        _job_id.reset(job_token)
        _user.reset(user_token)


def set_user(user: object) -> None:
    """Tag the rest of this request's (or this about_job block's) log lines with the user."""
    _user.set(str(user) if user is not None else None)


def set_job(job_id: object) -> None:
    """Tag the rest of this request's log lines with the job it is about."""
    _job_id.set(str(job_id) if job_id is not None else None)


def clear() -> None:
    """Forget the job and user at the end of a request, so the thread's next request starts clean."""
    _job_id.set(None)
    _user.set(None)


class ContextFilter(logging.Filter):
    """Adds job_id, user and a printable `context` to every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id, user = _job_id.get(), _user.get()
        record.job_id = job_id
        record.user = user
        parts = [f"job={job_id}"] if job_id else []
        if user:
            parts.append(f"user={user}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, user, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "user": getattr(record, "user", None),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def handler(log_format: str) -> logging.Handler:
    """A standard-error handler writing `log_format` lines with the job and user context."""
    stream = logging.StreamHandler()
    stream.addFilter(ContextFilter())
    stream.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return stream
