"""Logging in and out: /api/auth."""

from __future__ import annotations

import logging

from flask import current_app
from flask_jwt_extended import current_user, decode_token, get_jwt, jwt_required
from flask_smorest import Blueprint
from jwt.exceptions import PyJWTError

from api.errors import ApiError, ErrorSchema
from api.schemas import LoginSchema, LogoutSchema, TokenSchema, UserSchema
from auth.tokens import issue_tokens, revoke_session, revoke_token
from auth.users import authenticate

logger = logging.getLogger(__name__)

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Log in, refresh tokens, log out.")


@blp.route("/login", methods=["POST"])
@blp.doc(security=[])
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password.")
def login(credentials: dict) -> dict:
    """Exchange a username and password for an access and a refresh token."""
    user = authenticate(current_app.extensions["clara_db"], credentials["username"], credentials["password"])
    if user is None:
        logger.info("Login failed for username %s.", credentials["username"])
        raise ApiError(401, "Wrong username or password.", "invalid_credentials")
    logger.info("User %s logged in.", user["username"])
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


@blp.route("/me", methods=["GET"])
@jwt_required()
@blp.response(200, UserSchema)
def me() -> dict:
    """The user the token belongs to."""
    return current_user
