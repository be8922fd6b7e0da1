"""Request and response schemas of /api/datasets."""

from __future__ import annotations

import unicodedata

import marshmallow as ma
from marshmallow import fields, validate

from api.openapi_examples import CREATED_AT, DATASET_ID, FINISHED_AT, STARTED_AT
from api.schemas import JOB_STATUSES, InputSchema, JobStateSchema

SPLITS = ("train", "validation")
FILE_FORMATS = ("jsonl", "parquet", "csv")

# The examples of the OpenAPI document: a completed build of German social law, and its first record.
RECORD_EXAMPLE = {"text": "§ 5 SGB V Versicherungspflicht\n\nVersicherungspflichtig sind Arbeiter, Angestellte "
                          "und zu ihrer Berufsausbildung Beschäftigte, die gegen Arbeitsentgelt beschäftigt sind."}
BUILD_EXAMPLE = {
    "name": "gesetze-de", "description": "Sozialgesetzbuch V, ohne Dubletten.",
    "sources": [{"type": "postgres", "query": "Krankenversicherung", "metadata": {"law": "SGB V"}, "limit": 10000}],
    "quality": {"min_chars": 200, "languages": ["de"], "dedup": "near", "redact_pii": True},
    "format": {"kind": "text", "mapping": {"text": "{title}\n\n{content}"}},
    "split": {"validation_fraction": 0.05, "seed": 42}, "export_formats": ["jsonl", "parquet"],
}
_FILE = {"path": "train.jsonl", "records": 1900, "bytes": 2874113,
         "sha256": "7fe85c85eaec2793640530755eeb81b17847ff8c8ba60408ff27440ca46f4ebe"}
DATASET_EXAMPLE = {
    "object": "dataset", "id": DATASET_ID, "name": "gesetze-de", "description": "Sozialgesetzbuch V, ohne Dubletten.",
    "kind": "build", "status": "completed", "is_terminal": True, "owner": "maria", "created_at": CREATED_AT,
    "started_at": STARTED_AT, "finished_at": FINISHED_AT, "error": None, "attempts": 1, "worker": "celery@cpu-01",
    "cancel_requested": False, "spec": BUILD_EXAMPLE, "progress": {"documents": 2000, "written": 2000},
    "manifest": {"builder_version": "1.0.0", "format": "text", "counts": {"read": 2140, "written": 2000},
                 "records": {"train": 1900, "validation": 100}, "token_estimate": 1250000,
                 "files": {"jsonl": {"train": _FILE, "validation": {**_FILE, "path": "validation.jsonl",
                                                                    "records": 100, "bytes": 151270}}}},
    "size_bytes": 3025383,
}

QUEUED_DATASET_EXAMPLE = {**DATASET_EXAMPLE, "status": "queued", "is_terminal": False, "started_at": None,
                          "finished_at": None, "attempts": 0, "worker": None, "progress": {}, "manifest": None,
                          "size_bytes": None}
UPLOADED_DATASET_EXAMPLE = {
    **DATASET_EXAMPLE, "name": "buergerservice-faq", "description": "", "kind": "upload", "started_at": CREATED_AT,
    "finished_at": CREATED_AT, "attempts": 0, "worker": None, "progress": {},
    "spec": {"type": "upload", "filename": "buergerservice-faq.jsonl", "format": "jsonl"},
    "manifest": {"builder_version": "1.0.0", "format": "mixed", "counts": {"read": 60, "written": 60},
                 "records": {"train": 60, "validation": 0}, "token_estimate": 4977,
                 "source": {"type": "upload", "filename": "buergerservice-faq.jsonl", "format": "jsonl"},
                 "files": {"jsonl": {"train": {**_FILE, "records": 60, "bytes": 24369}}}},
    "size_bytes": 48738,
}
QUEUED_UPLOAD_EXAMPLE = {**UPLOADED_DATASET_EXAMPLE, "status": "queued", "is_terminal": False, "started_at": None,
                         "finished_at": None, "manifest": None, "size_bytes": None}
"""What POST /api/datasets/upload answers: the dataset, queued for a CPU worker to check and store."""


def printable(text: str) -> str:
    """Text without control or format characters (newlines, tabs, NUL, bidi overrides)."""
    return "".join(char for char in text if not unicodedata.category(char).startswith("C"))


def download_stem(name: str) -> str:
    """A dataset name made safe as a download's file name: printable, no path separators or quotes."""
    stem = printable(name).translate(str.maketrans({"/": "_", "\\": "_", '"': "_"})).strip(" .")
    return stem[:150] or "dataset"


def _no_control_characters(value: str) -> None:
    """Refuse a name with control characters: it would break headers and file names."""
    if printable(value) != value:
        raise ma.ValidationError("Must not contain control characters such as newlines or tabs.")

class DatasetCreateSchema(InputSchema):
    """A dataset build. The builder checks the parts in depth and names every bad field."""

    class Meta(InputSchema.Meta):
        example = BUILD_EXAMPLE

    name = fields.String(required=True, validate=[validate.Length(min=1, max=200), _no_control_characters],
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

    name = fields.String(validate=[validate.Length(min=1, max=200), _no_control_characters])
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    format = fields.String(validate=validate.OneOf(FILE_FORMATS),
                           metadata={"description": "The file's format; by default its extension."})


class UploadFileSchema(ma.Schema):
    """The uploaded file."""

    class Meta:
        example = {"file": '{"text": "Anmeldung einer Wohnung: innerhalb von zwei Wochen nach dem Einzug."}\n'}

    file = fields.Raw(metadata={"type": "string", "format": "binary"}, required=True)


class DatasetSchema(JobStateSchema):
    """A dataset: its build job's state and, once built, its manifest."""

    class Meta:
        example = DATASET_EXAMPLE

    object = fields.Constant("dataset")
    name = fields.String()
    description = fields.String()
    kind = fields.String(metadata={"description": "build or upload"})
    spec = fields.Dict()
    progress = fields.Dict()
    manifest = fields.Dict(allow_none=True)
    size_bytes = fields.Integer(allow_none=True, metadata={
        "description": "Bytes the dataset's files take, counted against the owner's storage quota; null until built."})


class DatasetListSchema(ma.Schema):
    """A page of datasets."""

    class Meta:
        example = {"object": "list", "data": [DATASET_EXAMPLE], "has_more": False}

    object = fields.Constant("list")
    data = fields.List(fields.Nested(DatasetSchema))
    has_more = fields.Boolean()


class PreviewSchema(ma.Schema):
    """The first records of a split."""

    class Meta:
        example = {"object": "list", "split": "train", "data": [RECORD_EXAMPLE]}

    object = fields.Constant("list")
    split = fields.String()
    data = fields.List(fields.Dict())
