"""User administration: /api/users (admins only)."""

from __future__ import annotations

from flask import current_app
from flask_smorest import Blueprint

from api.errors import ApiError, ErrorSchema
from api.schemas import UserCreateSchema, UserListQuerySchema, UserListSchema, UserSchema
from auth.tokens import roles_required
from auth.users import UsernameTaken, create_user, list_users

blp = Blueprint("users", __name__, url_prefix="/api/users", description="Create and list users (admins).")


@blp.route("", methods=["POST"])
@roles_required("admin")
@blp.arguments(UserCreateSchema)
@blp.response(201, UserSchema)
@blp.alt_response(409, schema=ErrorSchema, description="The username is taken.")
def create(body: dict) -> dict:
    """Create a user with a role among admin, trainer and analyst."""
    try:
        return create_user(current_app.extensions["clara_db"], body["username"], body["password"], body["role"])
    except UsernameTaken:
        raise ApiError(409, f"The username {body['username']!r} is taken.", "username_taken",
                       {"fields": {"username": ["Already taken."]}}) from None


@blp.route("", methods=["GET"])
@roles_required("admin")
@blp.arguments(UserListQuerySchema, location="query")
@blp.response(200, UserListSchema)
def index(query: dict) -> dict:
    """List users in creation order; pass the last id as `after` for the next page."""
    rows, has_more = list_users(current_app.extensions["clara_db"], limit=query["limit"], after=query.get("after"))
    return {"data": rows, "has_more": has_more}
