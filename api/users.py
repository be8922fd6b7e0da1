"""User administration: /api/users (admins only)."""

from __future__ import annotations

import marshmallow as ma
from flask import current_app
from flask_jwt_extended import current_user
from flask_smorest import Blueprint

from api.errors import ApiError, ErrorSchema
from api.openapi_examples import error_example, field_error, forbidden
from api.schemas import (
    InputSchema,
    PasswordResetSchema,
    StrictBoolean,
    UserCreateSchema,
    UserListQuerySchema,
    UserListSchema,
    UserSchema,
)
from auth.tokens import roles_required
from auth.users import UsernameTaken, create_user, list_users, set_disabled, set_password
from records import audit

ADMINS_ONLY = {"schema": ErrorSchema, "description": "Only admins manage users.", "example": forbidden("admin")}

blp = Blueprint("users", __name__, url_prefix="/api/users",
                description="Create, list, disable and enable users, and reset their passwords (admins).")


class UserUpdateSchema(InputSchema):
    """What an admin may change about a user."""

    class Meta(InputSchema.Meta):
        example = {"disabled": True}

    disabled = StrictBoolean(required=True, metadata={
        "description": "A disabled user's tokens stop working; those of before stay dead after re-enabling."})


def _entry(action: str, object_id: int | None = None, **details) -> audit.Entry:
    """An audit entry for what the signed-in admin does to a user."""
    return audit.Entry(current_user["id"], current_user["username"], action, "user",
                       None if object_id is None else str(object_id), details)


@blp.route("", methods=["POST"])
@roles_required("admin")
@blp.arguments(UserCreateSchema)
@blp.response(201, UserSchema)
@blp.alt_response(403, **ADMINS_ONLY)
@blp.alt_response(409, schema=ErrorSchema, description="The username is taken.",
                  example=error_example("username_taken", "The username 'maria' is taken.",
                                        fields={"username": ["Already taken."]}))
@blp.alt_response(422, schema=ErrorSchema, description="A field is missing or invalid; the response names it.",
                  example=field_error("password", "Length must be between 12 and 1024."))
def create(body: dict) -> dict:
    """Create a user with a role among admin, trainer and analyst."""
    try:
        return create_user(current_app.extensions["clara_db"], body["username"], body["password"], body["role"],
                           audit_entry=_entry("user.create", username=body["username"], role=body["role"]))
    except UsernameTaken:
        raise ApiError(409, f"The username {body['username']!r} is taken.", "username_taken",
                       {"fields": {"username": ["Already taken."]}}) from None


@blp.route("", methods=["GET"])
@roles_required("admin")
@blp.arguments(UserListQuerySchema, location="query", unknown=ma.RAISE)
@blp.response(200, UserListSchema)
@blp.alt_response(403, **ADMINS_ONLY)
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid; the response names it.",
                  example=field_error("limit", "Must be greater than or equal to 1 and less than or equal to 200."))
def index(query: dict) -> dict:
    """List users in creation order; pass the last id as `after` for the next page."""
    rows, has_more = list_users(current_app.extensions["clara_db"], limit=query["limit"], after=query.get("after"))
    return {"data": rows, "has_more": has_more}


@blp.route("/<int:user_id>", methods=["PATCH"])
@roles_required("admin")
@blp.arguments(UserUpdateSchema)
@blp.response(200, UserSchema)
@blp.alt_response(403, **ADMINS_ONLY)
@blp.alt_response(404, schema=ErrorSchema, description="No such user.",
                  example=error_example("user_not_found", "No user 7."))
@blp.alt_response(409, schema=ErrorSchema, description="Admins cannot disable themselves.",
                  example=error_example("cannot_disable_self", "You cannot disable your own account."))
@blp.alt_response(422, schema=ErrorSchema, description="disabled is missing or not a boolean.",
                  example=field_error("disabled", "Missing data for required field."))
def update(body: dict, user_id: int) -> dict:
    """Disable or enable a user; either ends the user's sessions, so their earlier tokens stop working for good."""
    if user_id == current_user["id"] and body["disabled"]:
        # The last admin disabling themselves would leave nobody able to undo it.
        raise ApiError(409, "You cannot disable your own account.", "cannot_disable_self")
    action = "user.disable" if body["disabled"] else "user.enable"
    user = set_disabled(current_app.extensions["clara_db"], user_id, body["disabled"],
                        audit_entry=_entry(action, user_id))
    if user is None:
        raise ApiError(404, f"No user {user_id}.", "user_not_found")
    return user


@blp.route("/<int:user_id>/password", methods=["POST"])
@roles_required("admin")
@blp.arguments(PasswordResetSchema)
@blp.response(204)
@blp.alt_response(403, **ADMINS_ONLY)
@blp.alt_response(404, schema=ErrorSchema, description="No such user.",
                  example=error_example("user_not_found", "No user 7."))
@blp.alt_response(409, schema=ErrorSchema, description="Admins change their own password with POST /api/auth/password.",
                  example=error_example("cannot_reset_own_password",
                                        "Change your own password with POST /api/auth/password."))
@blp.alt_response(422, schema=ErrorSchema, description="password is missing or shorter than 12 characters.",
                  example=field_error("password", "Shorter than minimum length 12."))
def reset_password(body: dict, user_id: int) -> None:
    """Set a user's password, for one who forgot theirs; every session of that user ends."""
    if user_id == current_user["id"]:
        # Without the current password a stolen admin token could take the admin's account over for good.
        raise ApiError(409, "Change your own password with POST /api/auth/password.", "cannot_reset_own_password")
    user = set_password(current_app.extensions["clara_db"], user_id, body["password"], "password_reset",
                        audit_entry=_entry("user.password_reset", user_id))
    if user is None:
        raise ApiError(404, f"No user {user_id}.", "user_not_found")
