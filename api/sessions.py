"""Logging in and out, refreshing tokens and changing one's password: /api/auth."""

from __future__ import annotations

import logging

from flask import current_app, request
from flask_jwt_extended import current_user, decode_token, get_jwt, jwt_required
from flask_smorest import Blueprint
from jwt.exceptions import PyJWTError

from api.errors import ApiError, ErrorSchema
from api.openapi_examples import error_example, field_error
from api.schemas import LoginSchema, LogoutSchema, PasswordChangeSchema, TokenSchema, UserSchema
from auth import login_limits
from auth.tokens import RefreshReused, issue_tokens, refresh_tokens, revoke_sessions
from auth.users import authenticate, check_password, set_password, user_id_of
from records import audit

logger = logging.getLogger(__name__)

blp = Blueprint("auth", __name__, url_prefix="/api/auth",
                description="Log in, refresh tokens, log out, change your password.")

TOO_MANY_FAILURES = {
    "schema": ErrorSchema,
    "description": "Too many failed logins; Retry-After says when to try again.",
    "example": error_example("too_many_requests", "Too many failed logins; try again in 60 seconds.", retry_after=60),
    "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
}


def _refuse_while_limited(username: str, address: str, log_name: str) -> None:
    """Answer 429 while failed logins for this username (or, for a username that failed, this address) lock it."""
    settings = current_app.extensions["clara_settings"]
    wait = login_limits.retry_after(current_app.extensions["clara_redis"], settings, username, address)
    if wait is not None:
        logger.warning("Login for %s from %s refused: too many failed logins.", log_name, address)
        raise ApiError(429, f"Too many failed logins; try again in {wait} seconds.", "too_many_requests",
                       {"retry_after": wait}, headers={"Retry-After": str(wait)})


@blp.route("/login", methods=["POST"])
@blp.doc(security=[])
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password.",
                  example=error_example("invalid_credentials", "Wrong username or password."))
@blp.alt_response(422, schema=ErrorSchema, description="A field is missing or invalid; the response names it.",
                  example=field_error("password", "Missing data for required field."))
@blp.alt_response(429, **TOO_MANY_FAILURES)
def login(credentials: dict) -> dict:
    """Exchange a username and password for an access and a refresh token."""
    settings = current_app.extensions["clara_settings"]
    store = current_app.extensions["clara_redis"]
    db = current_app.extensions["clara_db"]
    username, address = credentials["username"], request.remote_addr or "unknown"
    # What was typed as a username is often a password: logs get a keyed digest, never the text itself.
    typed = login_limits.username_digest(settings, username)
    # Checked before the password, so a locked-out username cannot be probed further, even with the right one.
    _refuse_while_limited(username, address, typed)
    user = authenticate(db, username, credentials["password"])
    if user is None:
        login_limits.record_failure(store, settings, username, address)
        actor_id = user_id_of(db, username)
        logger.info("Login failed for %s from %s.", username if actor_id else f"unknown user {typed}", address)
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
@blp.alt_response(401, schema=ErrorSchema,
                  description="The refresh token is missing, invalid, expired or revoked. A refresh token that was "
                              "already exchanged revokes its whole session: it was stolen, or used twice at once.",
                  example=error_example("token_revoked", "The token has been revoked; log in again."))
def refresh() -> dict:
    """Exchange the session's current refresh token for a new pair; that refresh token stops working."""
    claims = get_jwt()
    try:
        return refresh_tokens(current_user, claims)
    except RefreshReused:
        if revoke_sessions(current_user["id"], [claims["sid"]], "refresh_reuse"):
            address = request.remote_addr or "unknown"
            logger.warning("A refresh token of user %s was used again from %s; its session is revoked.",
                           current_user["username"], address)
            audit.record(current_app.extensions["clara_db"], audit.Entry(
                current_user["id"], current_user["username"], "auth.refresh_reuse", "user",
                str(current_user["id"]), {"address": address}))
        raise ApiError(401, "The token has been revoked; log in again.", "token_revoked") from None


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
    sids = [claims["sid"]]
    if body.get("refresh_token"):
        try:
            refresh_claims = decode_token(body["refresh_token"], allow_expired=True)
        except PyJWTError:
            raise ApiError(422, "refresh_token: not a valid Clara token.", "validation_error",
                           {"fields": {"refresh_token": ["Not a valid Clara token."]}}) from None
        if refresh_claims.get("sub") == claims["sub"] and refresh_claims.get("sid"):
            sids.append(refresh_claims["sid"])
    revoke_sessions(current_user["id"], sids, "logout")
    logger.info("User %s logged out.", current_user["username"])
    audit.record(current_app.extensions["clara_db"], audit.Entry(
        current_user["id"], current_user["username"], "auth.logout", "user", str(current_user["id"])))


@blp.route("/password", methods=["POST"])
@jwt_required()
@blp.arguments(PasswordChangeSchema)
@blp.response(200, TokenSchema, description="The password is changed and every earlier session of the user "
                                            "ended; these tokens start a new one.")
@blp.alt_response(403, schema=ErrorSchema, description="current_password is wrong; it counts as a failed login.",
                  example=error_example("wrong_password", "The current password is wrong.",
                                        fields={"current_password": ["Wrong password."]}))
@blp.alt_response(422, schema=ErrorSchema, description="A field is missing or invalid; the response names it.",
                  example=field_error("new_password", "Shorter than minimum length 12."))
@blp.alt_response(429, **TOO_MANY_FAILURES)
def change_password(body: dict) -> dict:
    """Change your own password; every session you have (all your earlier tokens) ends, on every device."""
    settings = current_app.extensions["clara_settings"]
    store = current_app.extensions["clara_redis"]
    db = current_app.extensions["clara_db"]
    user, address = current_user, request.remote_addr or "unknown"
    # A stolen access token must not become a way to guess the password: the login limits apply here too.
    _refuse_while_limited(user["username"], address, user["username"])
    if not check_password(db, user["id"], body["current_password"]):
        login_limits.record_failure(store, settings, user["username"], address)
        logger.info("Password change of user %s from %s refused: wrong current password.", user["username"],
                    address)
        audit.record(db, audit.Entry(user["id"], user["username"], "auth.password_change_failed", "user",
                                     str(user["id"]), {"address": address}))
        raise ApiError(403, "The current password is wrong.", "wrong_password",
                       {"fields": {"current_password": ["Wrong password."]}})
    if body["new_password"] == body["current_password"]:
        raise ApiError(422, "Invalid request. new_password: Must differ from the current password.",
                       "validation_error", {"fields": {"new_password": ["Must differ from the current password."]}})
    changed = set_password(db, user["id"], body["new_password"], "password_change", audit.Entry(
        user["id"], user["username"], "auth.password_change", "user", str(user["id"]), {"address": address}))
    login_limits.clear_user(store, user["username"])
    return issue_tokens(changed)


@blp.route("/me", methods=["GET"])
@jwt_required()
@blp.response(200, UserSchema)
def me() -> dict:
    """The user the token belongs to."""
    return current_user
