"""Request and response schemas of /api/datasets."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from api.schemas import JOB_STATUSES, InputSchema, JobStateSchema

SPLITS = ("train", "validation")
FILE_FORMATS = ("jsonl", "parquet", "csv")


class DatasetCreateSchema(InputSchema):
    """A dataset build. The builder checks the parts in depth and names every bad field."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=200),
                         metadata={"example": "gesetze-de"})
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    sources = fields.List(fields.Dict(), required=True, validate=validate.Length(min=1, max=20), metadata={
        "example": [{"type": "postgres", "query": "Krankenversicherung", "metadata": {"law": "SGB V"},
                     "limit": 10000}]})
    quality = fields.Dict(load_default=dict, metadata={
        "example": {"min_chars": 200, "languages": ["de"], "dedup": "near", "redact_pii": True}})
    format = fields.Dict(load_default=lambda: {"kind": "text"},
                         metadata={"example": {"kind": "text", "mapping": {"text": "{title}\n\n{content}"}}})
    split = fields.Dict(load_default=dict, metadata={"example": {"validation_fraction": 0.05, "seed": 42}})
    export_formats = fields.List(fields.String(validate=validate.OneOf(FILE_FORMATS)),
                                 load_default=lambda: list(FILE_FORMATS))


class DatasetListQuerySchema(InputSchema):
    """Filters and the cursor for listing datasets."""

    status = fields.String(validate=validate.OneOf(JOB_STATUSES))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    after = fields.UUID(metadata={"description": "The id of the last dataset of the previous page."})


class PreviewQuerySchema(InputSchema):
    """Which records to preview."""

    split = fields.String(load_default="train", validate=validate.OneOf(SPLITS))
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))


class FileQuerySchema(InputSchema):
    """Which split to download."""

    split = fields.String(load_default="train", validate=validate.OneOf(SPLITS))


class UploadFormSchema(InputSchema):
    """The form fields that come with an uploaded file."""

    name = fields.String(validate=validate.Length(min=1, max=200))
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    format = fields.String(validate=validate.OneOf(FILE_FORMATS),
                           metadata={"description": "The file's format; by default its extension."})


class UploadFileSchema(ma.Schema):
    """The uploaded file."""

    file = fields.Raw(metadata={"type": "string", "format": "binary"}, required=True)


class DatasetSchema(JobStateSchema):
    """A dataset: its build job's state and, once built, its manifest."""

    object = fields.Constant("dataset")
    name = fields.String()
    description = fields.String()
    kind = fields.String(metadata={"description": "build or upload"})
    spec = fields.Dict()
    progress = fields.Dict()
    manifest = fields.Dict(allow_none=True)


class DatasetListSchema(ma.Schema):
    """A page of datasets."""

    object = fields.Constant("list")
    data = fields.List(fields.Nested(DatasetSchema))
    has_more = fields.Boolean()


class PreviewSchema(ma.Schema):
    """The first records of a split."""

    object = fields.Constant("list")
    split = fields.String()
    data = fields.List(fields.Dict())
