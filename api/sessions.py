"""Logging in and out: /api/auth."""

from __future__ import annotations

import logging

from flask import current_app, request
from flask_jwt_extended import current_user, decode_token, get_jwt, jwt_required
from flask_smorest import Blueprint
from jwt.exceptions import PyJWTError

from api.errors import ApiError, ErrorSchema
from api.openapi_examples import error_example, field_error
from api.schemas import LoginSchema, LogoutSchema, TokenSchema, UserSchema
from auth import login_limits
from auth.tokens import issue_tokens, revoke_session, revoke_token
from auth.users import authenticate, user_id_of
from records import audit

logger = logging.getLogger(__name__)

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Log in, refresh tokens, log out.")


@blp.route("/login", methods=["POST"])
@blp.doc(security=[])
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password.",
                  example=error_example("invalid_credentials", "Wrong username or password."))
@blp.alt_response(422, schema=ErrorSchema, description="A field is missing or invalid; the response names it.",
                  example=field_error("password", "Missing data for required field."))
@blp.alt_response(429, schema=ErrorSchema, description="Too many failed logins; Retry-After says when to try again.",
                  example=error_example("too_many_requests", "Too many failed logins; try again in 60 seconds.",
                                        retry_after=60),
                  headers={"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}})
def login(credentials: dict) -> dict:
    """Exchange a username and password for an access and a refresh token."""
    settings = current_app.extensions["clara_settings"]
    store = current_app.extensions["clara_redis"]
    db = current_app.extensions["clara_db"]
    username, address = credentials["username"], request.remote_addr or "unknown"
    # Checked before the password, so a locked-out username cannot be probed further, even with the right one.
    wait = login_limits.retry_after(store, settings, username, address)
    if wait is not None:
        logger.warning("Login for username %s from %s refused: too many failed logins.", username, address)
        raise ApiError(429, f"Too many failed logins; try again in {wait} seconds.", "too_many_requests",
                       {"retry_after": wait}, headers={"Retry-After": str(wait)})
    user = authenticate(db, username, credentials["password"])
    if user is None:
        login_limits.record_failure(store, settings, username, address)
        logger.info("Login failed for username %s from %s.", username, address)
        actor_id = user_id_of(db, username)
        # An unknown username is not stored: it may be a password typed into the wrong field.
        audit.record(db, audit.Entry(actor_id, username if actor_id else "(unknown user)", "auth.login_failed",
                                     "user", str(actor_id) if actor_id else None, {"address": address}))
        raise ApiError(401, "Wrong username or password.", "invalid_credentials")
    login_limits.clear_user(store, username)
    logger.info("User %s logged in from %s.", user["username"], address)
    audit.record(db, audit.Entry(user["id"], user["username"], "auth.login", "user", str(user["id"]),
                                 {"address": address}))
    return issue_tokens(user)


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True)
@blp.response(200, TokenSchema)
def refresh() -> dict:
    """Exchange a refresh token for a new token pair; the old refresh token stops working."""
    claims = get_jwt()
    revoke_token(claims)
    return issue_tokens(current_user, session_id=claims.get("sid"))


@blp.route("/logout", methods=["POST"])
@jwt_required()
@blp.arguments(LogoutSchema, required=False)
@blp.response(204)
@blp.alt_response(422, schema=ErrorSchema, description="refresh_token is not a token Clara signed.",
                  example=error_example("validation_error", "refresh_token: not a valid Clara token.",
                                        fields={"refresh_token": ["Not a valid Clara token."]}))
def logout(body: dict) -> None:
    """Revoke this login: its access token, its refresh token, and every token refreshed from them."""
    claims = get_jwt()
    revoke_session(claims)
    if body.get("refresh_token"):
        try:
            refresh_claims = decode_token(body["refresh_token"], allow_expired=True)
        except PyJWTError:
            raise ApiError(422, "refresh_token: not a valid Clara token.", "validation_error",
                           {"fields": {"refresh_token": ["Not a valid Clara token."]}}) from None
        if refresh_claims.get("sub") == claims["sub"]:
            revoke_session(refresh_claims)
    logger.info("User %s logged out.", current_user["username"])
    audit.record(current_app.extensions["clara_db"], audit.Entry(
        current_user["id"], current_user["username"], "auth.logout", "user", str(current_user["id"])))


@blp.route("/me", methods=["GET"])
@jwt_required()
@blp.response(200, UserSchema)
def me() -> dict:
    """The user the token belongs to."""
    return current_user
