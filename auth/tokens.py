"""JWTs: issuing access and refresh tokens tied to login sessions in PostgreSQL, and checking roles."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
from flask import Flask, current_app, g, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    current_user,
    decode_token,
    get_jwt,
)
from flask_jwt_extended.config import config as jwt_config
from flask_jwt_extended.internal_utils import verify_token_not_blocklisted, verify_token_type
from flask_jwt_extended.view_decorators import _decode_jwt_from_headers
from flask_jwt_extended.view_decorators import _load_user as _user_of_token

import structured_logs
from api.errors import ApiError, error_response
from records import jobs, sessions
from settings import Settings, SettingsError

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
# The token check of a request leaves the user row here for the user loader, so both cost one query.
_STATE = "_clara_token_state"
_MISSING = object()
_VERIFIED = "clara_verified_tokens"
# A job view names its job here before the token check, which then fetches it in the same query.
_WANTS_JOB = "_clara_wants_job"
_JOB = "_clara_job"
# A list view's token, decoded but not yet checked against PostgreSQL: visible_page checks it with the page's query.
_PENDING = "_clara_pending_token"
# Token state a view's own query has read; the blocklist loader then asks PostgreSQL nothing more.
_FETCHED = "_clara_fetched_state"


class RefreshReused(Exception):
    """A refresh token that is no longer its session's current one was presented."""


def configure_jwt(app: Flask, settings: Settings) -> JWTManager:
    """Configure flask-jwt-extended for Clara: pinned algorithm, short access tokens, sessions in PostgreSQL."""
    # Checked here rather than in settings.load(): workers and Flower load settings but never sign a token.
    problems = settings.api_problems()
    if problems:
        raise SettingsError(problems)
    app.config.update(
        JWT_SECRET_KEY=settings.secret_key,
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=settings.access_token_minutes),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=settings.refresh_token_days),
        JWT_ERROR_MESSAGE_KEY="message",
    )
    jwt = JWTManager(app)
    app.extensions[_VERIFIED] = VerifiedTokens()

    @jwt.token_in_blocklist_loader
    def _revoked(_header: dict, payload: dict) -> bool:
        # flask-jwt-extended asks this before the user loader; one query answers both (and a job view's job).
        db, user_id, sid = current_app.extensions["clara_db"], int(payload["sub"]), payload.get("sid")
        state = g.pop(_FETCHED, _MISSING)  # Read with a list page (visible_page) already.
        if state is _MISSING:
            job_id = g.pop(_WANTS_JOB, None)
            if job_id is None:
                state = sessions.token_state(db, user_id, sid)
            else:
                state, job = sessions.token_state_and_job(db, user_id, sid, job_id)
                setattr(g, _JOB, job)
        setattr(g, _STATE, state)
        return state is not None and not token_is_current(state, payload)

    @jwt.user_lookup_loader
    def _load_user(_header: dict, payload: dict) -> dict[str, Any] | None:
        user = g.pop(_STATE, _MISSING)
        if user is _MISSING:
            user = sessions.token_state(current_app.extensions["clara_db"], int(payload["sub"]), payload.get("sid"))
        if user:
            structured_logs.set_user(user["username"])
        return user if user and not user["disabled"] else None

    @jwt.unauthorized_loader
    def _missing(reason: str):
        return error_response(401, f"Authentication required: {reason}.", "unauthorized")

    @jwt.invalid_token_loader
    def _invalid(reason: str):
        return error_response(401, f"Invalid token: {reason}.", "invalid_token")

    @jwt.expired_token_loader
    def _expired(_header: dict, _payload: dict):
        return error_response(401, "The token has expired; refresh it or log in again.", "token_expired")

    @jwt.revoked_token_loader
    def _revoked_answer(_header: dict, _payload: dict):
        return error_response(401, "The token has been revoked; log in again.", "token_revoked")

    @jwt.user_lookup_error_loader
    def _unknown_user(_header: dict, _payload: dict):
        return error_response(401, "The token's user no longer exists or is disabled.", "unauthorized")

    @jwt.needs_fresh_token_loader
    def _not_fresh(_header: dict, _payload: dict):
        return error_response(401, "A fresh login is required.", "fresh_token_required")

    return jwt


def token_is_current(state: dict[str, Any], payload: dict[str, Any]) -> bool:
    """Whether a token's session is live and it carries its user's current token version."""
    return bool(state["session_live"]) and payload.get("ver") == state["token_version"]


def _signed_pair(user: dict[str, Any], sid: str, refresh_jti: str) -> tuple[dict[str, Any], datetime]:
    """An access and a refresh token of one session, and when the refresh token expires."""
    claims = {"role": user["role"], "username": user["username"], "sid": sid, "ver": user["token_version"]}
    identity = str(user["id"])
    access = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    refresh_expires = datetime.now(UTC) + current_app.config["JWT_REFRESH_TOKEN_EXPIRES"]
    tokens = {
        "access_token": create_access_token(identity, additional_claims=claims),
        "refresh_token": create_refresh_token(identity, additional_claims={**claims, "jti": refresh_jti}),
        "token_type": "Bearer",
        "expires_in": int(access.total_seconds()),
    }
    return tokens, refresh_expires


def issue_tokens(user: dict[str, Any]) -> dict[str, Any]:
    """Start a login session for the user (as read when its password was checked) and return its token pair."""
    sid, refresh_jti = uuid.uuid4().hex, str(uuid.uuid4())
    tokens, expires_at = _signed_pair(user, sid, refresh_jti)
    sessions.start(current_app.extensions["clara_db"], sid, user["id"], refresh_jti, expires_at)
    return tokens


def refresh_tokens(user: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    """Swap a session's current refresh token for a new pair; RefreshReused when it is not the current one."""
    new_jti = str(uuid.uuid4())
    tokens, expires_at = _signed_pair(user, claims["sid"], new_jti)
    if not sessions.rotate(current_app.extensions["clara_db"], claims["sid"], claims["jti"], new_jti, expires_at):
        raise RefreshReused(claims["sid"])
    return tokens


def revoke_sessions(user_id: int, sids: list[str], reason: str) -> int:
    """Revoke these sessions of the user, every token of them; how many were live until now."""
    return sessions.revoke(current_app.extensions["clara_db"], user_id, sids, reason)


def verify_access_token(job_id: uuid.UUID | None = None) -> None:
    """flask-jwt-extended's verify_jwt_in_request() for an access token in the Authorization header, decoded once.

    The library parses every token four times (unverified claims, unverified header, the verified decode, the
    header again), a third of a status poll's Python time. Here PyJWT verifies it once, with the same options;
    every check after that (token type, revocation and user state in one query, user lookup) and every error
    answer stay the library's own. A token PyJWT refuses goes through the library's decode, which raises the
    library's error for it (with the expired token's claims its expired-token answer needs).
    With job_id, the token check's query also reads that job as its user may see it (see visible_job).
    """
    token = _request_token()
    if token is None:
        return
    if job_id is not None:
        setattr(g, _WANTS_JOB, job_id)
    _check_token_state(*token)


def _request_token() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The verified header and claims of the request's access token (None for exempt methods); nothing stored read."""
    if request.method in jwt_config.exempt_methods:
        return None
    encoded, _ = _decode_jwt_from_headers()
    header, payload = _decode_access(encoded)
    verify_token_type(payload, refresh=False)
    return header, payload


def _check_token_state(header: dict[str, Any], payload: dict[str, Any]) -> None:
    """The library's checks of a decoded token against what is stored now (revocation, the user), and its g."""
    verify_token_not_blocklisted(header, payload)
    # Clara registers no claims verification callback (the library's default accepts every token).
    g._jwt_extended_jwt_user = _user_of_token(header, payload)
    g._jwt_extended_jwt_header = header
    g._jwt_extended_jwt = payload
    g._jwt_extended_jwt_location = "headers"


def _decode_access(encoded: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The verified header and claims of a token, as flask-jwt-extended's decode_token returns the claims."""
    key = jwt_config.decode_key
    verified = current_app.extensions[_VERIFIED].get(key, encoded)
    if verified is not None:
        return verified
    try:
        decoded = pyjwt.api_jwt.decode_complete(
            encoded, key, algorithms=jwt_config.decode_algorithms,
            audience=jwt_config.decode_audience, issuer=jwt_config.decode_issuer, leeway=jwt_config.leeway,
            options={"verify_aud": jwt_config.decode_audience is not None, "verify_sub": jwt_config.verify_sub})
    except pyjwt.PyJWTError:
        decode_token(encoded)  # Raises the library's own error for this token.
        raise
    header, payload = decoded["header"], decoded["payload"]
    if jwt_config.identity_claim_key not in payload:
        decode_token(encoded)  # The library's "Missing claim" error.
    # The defaults flask-jwt-extended's decode fills in for claims a token lacks.
    payload.setdefault("type", "access")
    payload.setdefault("fresh", False)
    payload.setdefault("jti", None)
    current_app.extensions[_VERIFIED].put(key, encoded, header, payload, jwt_config.leeway)
    return header, dict(payload)


class VerifiedTokens:
    """Tokens PyJWT has verified, so that a client polling with one token pays for its verification once.

    Verifying a signature is a function of the token and the key alone, so the answer holds for the exact same
    token string under the same key; only the expiry changes with time, and it is checked again on every use
    (a token that passed its iat and nbf checks passes them later too). Revocation and the user's state are
    never cached: they are one query on every request. Bounded: emptied when full.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._tokens: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], float]] = {}

    def get(self, key: str, encoded: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The header and a copy of the claims of a verified, unexpired token; None to verify it afresh."""
        entry = self._tokens.get((key, encoded))
        if entry is None:
            return None
        header, payload, expires_at = entry
        if time.time() >= expires_at:
            self._tokens.pop((key, encoded), None)
            return None  # PyJWT then refuses it with the library's expired-token error.
        return dict(header), dict(payload)

    def put(self, key: str, encoded: str, header: dict[str, Any], payload: dict[str, Any], leeway: float) -> None:
        """Remember a token PyJWT has just verified; tokens that never expire are not kept."""
        expires = payload.get("exp")
        if not isinstance(expires, int) or isinstance(expires, bool):
            return
        if len(self._tokens) >= self._size:
            self._tokens.clear()
        # PyJWT refuses a token once exp <= now - leeway.
        self._tokens[(key, encoded)] = (dict(header), dict(payload), expires + leeway)


def access_required(view: Callable) -> Callable:
    """Require a valid, unrevoked access token of an enabled user: jwt_required() with the token decoded once."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_access_token()
        return view(*args, **kwargs)

    return wrapper


def job_access_required(view: Callable) -> Callable:
    """access_required for a view of the job `job_id` in its path, read in the token check's own query.

    A status poll then costs one round trip to PostgreSQL; the view takes the job from visible_job().
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_access_token(job_id=kwargs["job_id"])
        return view(*args, **kwargs)

    return wrapper


def page_access_required(view: Callable) -> Callable:
    """access_required for a list view whose page is read in the token check's own query (see visible_page).

    The token is decoded and verified here as by access_required; its state in PostgreSQL is checked by
    visible_page, with the page, once the view has its parsed arguments. Should the view end before that (a bad
    query string), the token state is checked on its own first, so a revoked token still answers 401 before
    any 422, as when the check came first.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _request_token()
        if token is None:
            return view(*args, **kwargs)
        setattr(g, _PENDING, token)
        try:
            result = view(*args, **kwargs)
        except Exception:
            _check_pending_token()
            raise
        _check_pending_token()  # A view that did not call visible_page still gets the full check.
        return result

    return wrapper


def _check_pending_token() -> None:
    """Check the token page_access_required decoded, unless visible_page already has."""
    token = g.pop(_PENDING, None)
    if token is not None:
        _check_token_state(*token)


def visible_page(*, status: str | None, limit: int, after: uuid.UUID | None
                 ) -> tuple[list[dict[str, Any]], bool]:
    """Check page_access_required's token and read the page list_jobs returns for its user, in one query.

    The user's role as stored now decides what it sees (trainers only their own jobs). A refused token raises
    its 401 first; then records.jobs.UnknownCursor when `after` names no job the user may see.
    """
    header, payload = g.pop(_PENDING)
    state, page, has_more = sessions.token_state_and_page(
        current_app.extensions["clara_db"], int(payload["sub"]), payload.get("sid"),
        status=status, limit=limit, after=after)
    setattr(g, _FETCHED, state)
    _check_token_state(header, payload)
    if page is None:
        raise jobs.UnknownCursor(str(after))
    return page, has_more


def visible_job() -> dict[str, Any] | None:
    """The job job_access_required read, as records.jobs.get_job returns it; None if the caller may not see it."""
    return g.get(_JOB)


def roles_required(*roles: str) -> Callable:
    """Require a valid access token whose user (as stored now, not as when signed) has one of the roles."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verify_access_token()
            if current_user["role"] not in roles:
                raise ApiError(403, f"This action needs one of the roles: {', '.join(roles)}.", "forbidden")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def current_claims() -> dict[str, Any]:
    """The verified claims of the request's token."""
    return get_jwt()
