"""The audit log over HTTP: /api/audit (admins only)."""

from __future__ import annotations

import marshmallow as ma
from flask import current_app
from flask_smorest import Blueprint
from marshmallow import fields, validate

from api.errors import ErrorSchema
from api.openapi_examples import CREATED_AT, JOB_ID, field_error, forbidden
from api.schemas import InputSchema
from auth.tokens import roles_required
from records import audit

AUDIT_ENTRY_EXAMPLE = {"object": "audit.entry", "id": 311, "created_at": CREATED_AT, "actor": "maria",
                       "action": "training_job.submit", "object_type": "training_job", "object_id": JOB_ID,
                       "details": {"job_name": "citizen-faq-v1", "trainer_type": "lora"}}

blp = Blueprint("audit", __name__, url_prefix="/api/audit",
                description="Who created, cancelled or deleted what, and when (admins).")


class AuditQuerySchema(InputSchema):
    """Filters and the cursor for the audit log."""

    actor = fields.String(validate=validate.Length(min=1, max=200), metadata={"description": "A username."})
    action = fields.String(validate=validate.Length(min=1, max=100),
                           metadata={"description": "For example training_job.submit or dataset.delete."})
    object_id = fields.String(validate=validate.Length(min=1, max=200))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    after = fields.Integer(validate=validate.Range(min=1),
                           metadata={"description": "The id of the last entry of the previous page."})


class AuditEntrySchema(ma.Schema):
    """One audit entry."""

    class Meta:
        example = AUDIT_ENTRY_EXAMPLE

    object = fields.Constant("audit.entry")
    id = fields.Integer()
    created_at = fields.DateTime()
    actor = fields.String()
    action = fields.String()
    object_type = fields.String()
    object_id = fields.String(allow_none=True)
    details = fields.Dict()


class AuditListSchema(ma.Schema):
    """A page of audit entries."""

    class Meta:
        example = {"object": "list", "data": [AUDIT_ENTRY_EXAMPLE], "has_more": True}

    object = fields.Constant("list")
    data = fields.List(fields.Nested(AuditEntrySchema))
    has_more = fields.Boolean()


@blp.route("", methods=["GET"])
@roles_required("admin")
@blp.arguments(AuditQuerySchema, location="query", unknown=ma.RAISE)
@blp.response(200, AuditListSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Only admins read the audit log.", example=forbidden("admin"))
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid; the response names it.",
                  example=field_error("after", "Must be greater than or equal to 1."))
def index(query: dict) -> dict:
    """List audit entries, newest first; pass the last id of a page as `after` for the next."""
    rows, has_more = audit.list_entries(
        current_app.extensions["clara_db"], actor=query.get("actor"), action=query.get("action"),
        object_id=query.get("object_id"), limit=query["limit"], after=query.get("after"))
    return {"data": rows, "has_more": has_more}
