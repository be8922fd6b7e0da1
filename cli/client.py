"""HTTP client of the CLI: the API's base URL, the stored tokens and their refresh, errors as one line."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import click
import requests

from cli.tokens import TokenStore, normalise_url

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:45680"
# Refresh a little before the access token expires, so a request never races the expiry.
EXPIRY_MARGIN_SECONDS = 30
EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3
DOWNLOAD_CHUNK_BYTES = 1024 * 1024


class ClaraError(click.ClickException):
    """An error the CLI reports as one line on stderr, never as a traceback."""

    exit_code = EXIT_API_ERROR


class ApiError(ClaraError):
    """The API answered with an error body {"error": {"code", "message", "details"}}."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}


class Unreachable(ClaraError):
    """The API did not answer at all: wrong URL, server down, network."""

    exit_code = EXIT_UNREACHABLE


class NotLoggedIn(ClaraError):
    """No stored session for this URL."""


def error_from_response(response: requests.Response) -> ApiError:
    """Turn an error response into an ApiError carrying the API's own message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return ApiError(response.status_code, str(error.get("code") or "error"), str(error["message"]),
                        error.get("details") if isinstance(error.get("details"), dict) else None)
    # Not Clara's shape: a proxy in front of the API, or not a Clara server at all.
    text = " ".join(response.text.split())[:200] or response.reason or "no body"
    return ApiError(response.status_code, "http_error", f"HTTP {response.status_code} from {response.url}: {text}")


class Client:
    """Requests to one Clara API with the stored tokens; refreshes them once when they have expired."""

    def __init__(self, url: str | None = None, store: TokenStore | None = None, timeout: float = 30.0) -> None:
        self.url = normalise_url(url or os.environ.get("CLARA_URL") or DEFAULT_URL)
        self.store = store or TokenStore()
        self.timeout = timeout
        self.session = requests.Session()

    def _send(self, method: str, path: str, token: str | None, **kwargs: Any) -> requests.Response:
        """One HTTP request; connection problems become Unreachable."""
        headers = dict(kwargs.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return self.session.request(method, self.url + path, headers=headers, timeout=self.timeout, **kwargs)
        except requests.exceptions.InvalidURL as exc:
            raise ClaraError(f"Invalid Clara API URL {self.url}: {exc}") from None
        except requests.RequestException as exc:
            raise Unreachable(f"Cannot reach the Clara API at {self.url}: {_reason(exc)}") from None

    def _session_tokens(self) -> dict[str, Any]:
        entry = self.store.get(self.url)
        if not entry or not entry.get("access_token"):
            raise NotLoggedIn(f"Not logged in to {self.url}; run `clara login` first.")
        return entry

    def refresh(self) -> dict[str, Any]:
        """Exchange the stored refresh token for a new pair and store it."""
        entry = self._session_tokens()
        if not entry.get("refresh_token"):
            raise NotLoggedIn(f"The session for {self.url} cannot be refreshed; run `clara login` again.")
        response = self._send("POST", "/api/auth/refresh", entry["refresh_token"])
        if response.status_code == 401:
            error = error_from_response(response)
            raise NotLoggedIn(f"{error.message} Run `clara login` again.")
        if not response.ok:
            raise error_from_response(response)
        logger.debug("Refreshed the tokens for %s.", self.url)
        return self.store.save(self.url, response.json())

    def request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        """Send a request and return the successful response; raise ApiError for an error answer."""
        token = None
        if auth:
            entry = self._session_tokens()
            expires_at = entry.get("expires_at")
            if expires_at is not None and expires_at - EXPIRY_MARGIN_SECONDS < time.time():
                entry = self.refresh()
            token = entry["access_token"]
        response = self._send(method, path, token, **kwargs)
        if auth and response.status_code == 401 and error_from_response(response).code == "token_expired":
            # The clock of this machine and the server's may disagree; the server's answer decides.
            self._rewind_files(kwargs)
            response = self._send(method, path, self.refresh()["access_token"], **kwargs)
        if not response.ok:
            raise error_from_response(response)
        return response

    @staticmethod
    def _rewind_files(kwargs: dict[str, Any]) -> None:
        """An upload retried after a refresh must send its file from the start again."""
        for value in (kwargs.get("files") or {}).values():
            handle = value[1] if isinstance(value, tuple) else value
            if hasattr(handle, "seek"):
                handle.seek(0)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON resource."""
        return self.request("GET", path, params=_drop_none(params)).json()

    def post(self, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """POST JSON (or a multipart form via files/data) and return the JSON answer, or None for 204."""
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        """PATCH JSON and return the JSON answer."""
        return self.request("PATCH", path, json=body).json()

    def download(self, path: str, destination: Path, params: dict[str, Any] | None = None) -> int:
        """Stream a file to destination (written beside it first, renamed when whole); return its size."""
        response = self.request("GET", path, params=_drop_none(params), stream=True)
        partial = destination.with_name(destination.name + ".partial")
        size = 0
        try:
            with response, open(partial, "wb") as handle:
                for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                    handle.write(chunk)
                    size += len(chunk)
            os.replace(partial, destination)
        except requests.RequestException as exc:
            partial.unlink(missing_ok=True)
            raise Unreachable(f"The download from {self.url} broke off: {_reason(exc)}") from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ClaraError(f"Cannot write {destination}: {exc.strerror or exc}") from None
        return size


pass_client = click.make_pass_decorator(Client)


def _drop_none(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """Leave unset options out of the query string: the API answers 422 to unknown or empty values."""
    return None if params is None else {key: value for key, value in params.items() if value is not None}


def _reason(exc: requests.RequestException) -> str:
    """The innermost reason of a connection failure, without urllib3's nesting."""
    reason: BaseException = exc
    while reason.args and isinstance(reason.args[0], BaseException):
        reason = reason.args[0]
    inner = getattr(reason, "reason", None)
    if isinstance(inner, BaseException):
        reason = inner
    text = str(reason)
    return text.split(": ", 1)[-1] if "object at 0x" in text else text
