"""JWTs: issuing access and refresh tokens, revoking them in Redis, and checking roles."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from flask import Flask, current_app
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    current_user,
    get_jwt,
    verify_jwt_in_request,
)

import structured_logs
from api.errors import ApiError, error_response
from auth.users import get_user
from settings import Settings

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
_JTI_KEY = "clara:revoked:jti:"
_SESSION_KEY = "clara:revoked:session:"


def configure_jwt(app: Flask, settings: Settings) -> JWTManager:
    """Configure flask-jwt-extended for Clara: pinned algorithm, short access tokens, Redis blocklist."""
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

    @jwt.token_in_blocklist_loader
    def _revoked(_header: dict, payload: dict) -> bool:
        store = _redis()
        keys = [_JTI_KEY + payload["jti"]]
        if payload.get("sid"):
            keys.append(_SESSION_KEY + payload["sid"])
        return store.exists(*keys) > 0

    @jwt.user_lookup_loader
    def _load_user(_header: dict, payload: dict) -> dict[str, Any] | None:
        user = get_user(current_app.extensions["clara_db"], int(payload["sub"]))
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


def _redis() -> redis.Redis:
    """The API's Redis client."""
    return current_app.extensions["clara_redis"]


def issue_tokens(user: dict[str, Any], session_id: str | None = None) -> dict[str, Any]:
    """Create an access and a refresh token for the user, both tied to one login session."""
    claims = {"role": user["role"], "username": user["username"], "sid": session_id or uuid.uuid4().hex}
    identity = str(user["id"])
    expires = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    return {
        "access_token": create_access_token(identity, additional_claims=claims),
        "refresh_token": create_refresh_token(identity, additional_claims=claims),
        "token_type": "Bearer",
        "expires_in": int(expires.total_seconds()),
    }


def revoke_token(payload: dict[str, Any]) -> None:
    """Revoke one token until it would have expired anyway."""
    ttl = max(1, int(payload["exp"] - time.time()) + 1)
    _redis().set(_JTI_KEY + payload["jti"], "1", ex=ttl)


def revoke_session(payload: dict[str, Any]) -> None:
    """Revoke every token of the login session this token belongs to."""
    revoke_token(payload)
    if payload.get("sid"):
        ttl = int(current_app.config["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds()) + 1
        _redis().set(_SESSION_KEY + payload["sid"], "1", ex=ttl)


def roles_required(*roles: str) -> Callable:
    """Require a valid access token whose user (as stored now, not as when signed) has one of the roles."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verify_jwt_in_request()
            if current_user["role"] not in roles:
                raise ApiError(403, f"This action needs one of the roles: {', '.join(roles)}.", "forbidden")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def current_claims() -> dict[str, Any]:
    """The verified claims of the request's token."""
    return get_jwt()
