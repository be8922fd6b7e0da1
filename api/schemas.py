"""Request and response schemas. Input schemas reject unknown fields; output schemas are separate."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from api.openapi_examples import CREATED_AT, FINISHED_AT, JOB_ID, STARTED_AT, TOKEN
from auth.users import ROLES
from settings import MIN_PASSWORD_LENGTH
from trainers.config import (
    EXCLUSIVE_MIN,
    HYPERPARAMETER_BOUNDS,
    QUANTIZATION_BITS,
    TRAINER_TYPES,
    LoraHyperparameters,
    TrainingConfigError,
)

JOB_STATUSES = ("pending", "queued", "running", "completed", "failed", "cancelled")
MAX_METADATA_BYTES = 16 * 1024
BIGINT_MAX = 2**63 - 1

# The examples of the OpenAPI document: one running job, its events and checkpoints, and the user who owns it.
HYPERPARAMETERS_EXAMPLE = {"max_steps": 200, "learning_rate": 0.0002, "lora_rank": 16, "lora_alpha": 32.0,
                           "target_modules": ["q_proj", "v_proj"], "validation_split": 0.1, "eval_steps": 50}
JOB_HYPERPARAMETERS = {
    "batch_size": 4, "early_stopping_patience": None, "eval_steps": 50, "gradient_accumulation_steps": 1,
    "gradient_checkpointing": None, "learning_rate": 0.0002, "lora_alpha": 32.0, "lora_dropout": 0.05,
    "lora_rank": 16, "max_seq_length": 512, "max_steps": 200, "num_epochs": 1.0, "packing": "auto",
    "quantization_bits": None, "replay_fraction": 0.0, "save_steps": None, "save_total_limit": 2, "seed": 42,
    "target_modules": ["q_proj", "v_proj"], "validation_split": 0.1, "warmup_ratio": 0.0,
}
JOB_EXAMPLE = {
    "object": "training.job", "id": JOB_ID, "job_name": "citizen-faq-v1", "trainer_type": "lora",
    "status": "running", "is_terminal": False, "owner": "maria", "created_at": CREATED_AT, "started_at": STARTED_AT,
    "finished_at": None, "error": None, "attempts": 1, "worker": "celery@gpu-01", "cancel_requested": False,
    "base_model": "/srv/clara/models/tiny-llama", "dataset_path": "/srv/clara/data/demo-train.jsonl",
    "dataset_id": None, "hyperparameters": JOB_HYPERPARAMETERS, "metadata": {"team": "buergerservice"},
    "progress": {"step": 120, "total_steps": 200, "epoch": 0.6, "percent": 60.0, "eta_seconds": 95.0},
    "metrics": {"train_loss": 1.8412, "trained_tokens": 245760, "tokens_per_second": 2048.0},
    "adapter_path": None, "parent_job_id": None, "children": [],
}
QUEUED_JOB_EXAMPLE = {**JOB_EXAMPLE, "status": "queued", "started_at": None, "attempts": 0, "worker": None,
                      "progress": {"step": 0, "total_steps": None, "epoch": 0.0, "percent": 0.0, "eta_seconds": None},
                      "metrics": {"train_loss": None, "trained_tokens": 0, "tokens_per_second": None}}
CANCELLED_JOB_EXAMPLE = {**JOB_EXAMPLE, "status": "cancelled", "is_terminal": True, "cancel_requested": True,
                         "finished_at": FINISHED_AT}
EVENT_EXAMPLE = {"object": "training.job.event", "id": 42, "created_at": FINISHED_AT, "level": "info",
                 "type": "progress", "message": "Step 120 of 200, loss 1.8412.",
                 "data": {"step": 120, "total_steps": 200, "train_loss": 1.8412, "learning_rate": 0.00012}}
CHECKPOINT_EXAMPLE = {"object": "training.job.checkpoint", "id": "checkpoint-100", "step": 100,
                      "created_at": STARTED_AT, "metrics": {"train_loss": 1.9735, "eval_loss": 2.0518}}
USER_EXAMPLE = {"object": "user", "id": 7, "username": "maria", "role": "trainer", "disabled": False,
                "created_at": CREATED_AT}


def _nul_paths(value: object, path: str) -> list[str]:
    """The paths of the strings (keys included) inside a value that contain a NUL character."""
    if isinstance(value, str):
        return [path] if "\x00" in value else []
    if isinstance(value, Mapping):
        return [found for key, item in value.items()
                for found in ([f"{path}.{key}".lstrip(".")] if "\x00" in str(key) else [])
                + _nul_paths(item, f"{path}.{key}".lstrip("."))]
    if isinstance(value, list | tuple):
        return [found for index, item in enumerate(value) for found in _nul_paths(item, f"{path}[{index}]")]
    return []


class InputSchema(ma.Schema):
    """Base of every request schema: unknown fields are an error, named in the response."""

    class Meta:
        unknown = ma.RAISE

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        """Integers end up in PostgreSQL bigint columns: a larger one is a field error, not a database error."""
        if isinstance(field_obj, fields.Integer):
            field_obj.validators = [*field_obj.validators, validate.Range(min=-BIGINT_MAX - 1, max=BIGINT_MAX)]

    @ma.pre_load
    def _reject_nul(self, data: object, **kwargs) -> object:
        """PostgreSQL stores no NUL character in text or JSON, so a string holding one is a field error."""
        paths = _nul_paths(data, "") if isinstance(data, Mapping) else []
        if paths:
            raise ma.ValidationError({path: ["Must not contain a NUL character."] for path in paths})
        return data


class StrictFloat(fields.Float):
    """A JSON number; unlike marshmallow's Float, a string such as "0.1" is a type error."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


def _bounded(kind: type[fields.Number], name: str, **kwargs) -> fields.Number:
    """A number field whose range comes from the trainers' own bounds."""
    low, high = HYPERPARAMETER_BOUNDS[name]
    if kind is fields.Integer:
        kwargs["strict"] = True
    return kind(validate=validate.Range(min=low, max=high, min_inclusive=name not in EXCLUSIVE_MIN), **kwargs)


class TargetModules(fields.Field):
    """Either "all-linear" or a list of module names."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value == "all-linear":
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ma.ValidationError('Must be "all-linear" or a list of module names.')


class StrictBoolean(fields.Boolean):
    """A JSON true or false; marshmallow's Boolean would also take "yes", 1 and "on"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Packing(fields.Field):
    """true, false or "auto"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value == "auto" or isinstance(value, bool):
            return value
        raise ma.ValidationError('Must be true, false or "auto".')


class HyperparametersSchema(InputSchema):
    """Training hyperparameters; omitted ones take the defaults shown in the job."""

    class Meta(InputSchema.Meta):
        example = HYPERPARAMETERS_EXAMPLE

    num_epochs = _bounded(StrictFloat, "num_epochs")
    max_steps = _bounded(fields.Integer, "max_steps", allow_none=True)
    learning_rate = _bounded(StrictFloat, "learning_rate")
    batch_size = _bounded(fields.Integer, "batch_size",
                          metadata={"description": "Records per forward pass, packed or not; a step trains on "
                                                   "batch_size * gradient_accumulation_steps records."})
    gradient_accumulation_steps = _bounded(fields.Integer, "gradient_accumulation_steps")
    max_seq_length = _bounded(fields.Integer, "max_seq_length")
    lora_rank = _bounded(fields.Integer, "lora_rank")
    lora_alpha = _bounded(StrictFloat, "lora_alpha")
    lora_dropout = _bounded(StrictFloat, "lora_dropout")
    target_modules = TargetModules(allow_none=True, metadata={"example": ["q_proj", "v_proj"]})
    warmup_ratio = _bounded(StrictFloat, "warmup_ratio")
    seed = _bounded(fields.Integer, "seed")
    packing = Packing(metadata={"description": "Lay each batch's records out in shared rows of up to max_seq_length "
                                               'tokens instead of padding them; "auto" packs when that saves 15% of '
                                               "the tokens computed. The records per step stay the same.",
                                "example": "auto"})
    gradient_checkpointing = StrictBoolean(allow_none=True,
                                            metadata={"description": "Default: on for qlora, off otherwise."})
    quantization_bits = fields.Integer(strict=True, allow_none=True, validate=validate.OneOf(QUANTIZATION_BITS),
                                       metadata={"description": "qlora only: 4 (NF4, the default) or 8."})
    save_steps = _bounded(fields.Integer, "save_steps", allow_none=True,
                          metadata={"description": "Steps between checkpoints; default about a tenth of the run; "
                                                   "raised so a run saves at most CLARA_MAX_CHECKPOINTS_PER_RUN."})
    save_total_limit = _bounded(fields.Integer, "save_total_limit")
    validation_split = _bounded(StrictFloat, "validation_split",
                                metadata={"description": "Share of the training file held out for evaluation."})
    eval_steps = _bounded(fields.Integer, "eval_steps", allow_none=True,
                          metadata={"description": "Steps between evaluations; default about a tenth of the run; "
                                                   "raised so a run evaluates at most CLARA_MAX_EVALUATIONS_PER_RUN "
                                                   "times."})
    early_stopping_patience = _bounded(fields.Integer, "early_stopping_patience", allow_none=True)
    replay_fraction = _bounded(StrictFloat, "replay_fraction",
                               metadata={"description": "continuous only: share of the parent's records replayed."})

    @ma.post_load
    def _complete(self, data: dict, **kwargs) -> dict:
        """Fill defaults and apply the trainers' own checks, so the API and workers agree."""
        try:
            return LoraHyperparameters.from_dict(data).to_dict()
        except TrainingConfigError as exc:
            errors: dict[str, list[str]] = {}
            for problem in exc.problems:
                name, _, message = problem.partition(": ")
                errors.setdefault(name if message else "_schema", []).append(message or problem)
            raise ma.ValidationError(errors) from None


def _metadata_size(value: dict) -> None:
    """Keep metadata small: it is stored with every job."""
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ma.ValidationError(f"Must be at most {MAX_METADATA_BYTES} bytes as JSON.")


class JobCreateSchema(InputSchema):
    """A training job to submit."""

    class Meta(InputSchema.Meta):
        example = {"job_name": "citizen-faq-v1", "trainer_type": "lora", "base_model": "tiny-llama",
                   "dataset_path": "demo-train.jsonl", "hyperparameters": HYPERPARAMETERS_EXAMPLE,
                   "metadata": {"team": "buergerservice"}}

    job_name = fields.String(required=True, validate=validate.Length(min=1, max=200),
                             metadata={"example": "citizen-faq-v1"})
    trainer_type = fields.String(load_default="lora", validate=validate.OneOf(TRAINER_TYPES))
    base_model = fields.String(validate=validate.Length(min=1, max=300),
                               metadata={"description": "A hub id, or a directory name under CLARA_MODELS_DIR. "
                                                        "A continuous job takes its parent's.",
                                         "example": "tiny-llama"})
    parent_job_id = fields.UUID(metadata={"description": "continuous only: the completed job whose adapter "
                                                         "training continues."})
    # null is the same as leaving the field out, so a preset naming one can be switched to the other.
    dataset_path = fields.String(allow_none=True, validate=validate.Length(min=1, max=1000),
                                 metadata={"description": "A JSONL file under CLARA_DATA_DIR (or give dataset_id).",
                                           "example": "demo-train.jsonl"})
    dataset_id = fields.UUID(allow_none=True,
                             metadata={"description": "A completed dataset; its train split is trained on."})
    hyperparameters = fields.Nested(HyperparametersSchema, load_default=dict)
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=200)), load_default=dict,
                           validate=_metadata_size)

    @ma.validates_schema
    def _one_dataset(self, data: dict, **kwargs) -> None:
        """A job trains on a file or on a dataset, never both."""
        given = [name for name in ("dataset_path", "dataset_id") if data.get(name) is not None]
        if len(given) != 1:
            message = "Give exactly one of dataset_path and dataset_id."
            raise ma.ValidationError({name: [message] for name in (given or ["dataset_path", "dataset_id"])})

    @ma.validates_schema
    def _trainer_type_fields(self, data: dict, **kwargs) -> None:
        """A continuous job names its parent; other jobs name a base model; settings fit the type."""
        errors: dict[str, list[str]] = {}
        trainer_type = data.get("trainer_type", "lora")
        if trainer_type == "continuous":
            if data.get("parent_job_id") is None:
                errors["parent_job_id"] = ["A continuous job needs the id of the job it continues."]
        else:
            if data.get("parent_job_id") is not None:
                errors["parent_job_id"] = ["Only continuous jobs have a parent job."]
            if not data.get("base_model"):
                errors["base_model"] = ["Missing data for required field."]
        hyperparameters = data.get("hyperparameters") or {}
        try:
            problems = LoraHyperparameters.from_dict(hyperparameters).trainer_type_problems(trainer_type)
        except TrainingConfigError:
            problems = []  # The nested schema already reported these.
        for problem in problems:
            name, _, message = problem.partition(": ")
            errors.setdefault("hyperparameters", {}).setdefault(name, []).append(message)
        if errors:
            raise ma.ValidationError(errors)

    @ma.post_load
    def _defaults(self, data: dict, **kwargs) -> dict:
        """An empty hyperparameters object still gets every default."""
        if not data["hyperparameters"]:
            data["hyperparameters"] = LoraHyperparameters().to_dict()
        return data


class JobListQuerySchema(InputSchema):
    """Filters and the cursor for listing jobs."""

    status = fields.String(validate=validate.OneOf(JOB_STATUSES))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    after = fields.UUID(metadata={"description": "The id of the last job of the previous page."})


class EventListQuerySchema(InputSchema):
    """The cursor for a job's events."""

    after = fields.Integer(validate=validate.Range(min=0), metadata={"description": "The last event id seen."})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class ProgressSchema(ma.Schema):
    """How far a job has come."""

    step = fields.Integer()
    total_steps = fields.Integer()
    epoch = fields.Float()
    percent = fields.Float()
    eta_seconds = fields.Float(allow_none=True)


class MetricsSchema(ma.Schema):
    """Training metrics so far, or final."""

    class Meta:
        unknown = ma.INCLUDE

    train_loss = fields.Float(allow_none=True)
    trained_tokens = fields.Integer(allow_none=True)
    tokens_per_second = fields.Float(allow_none=True)


# What a job's progress shows for a key its worker has not reported yet (never changed: copied into each dump).
_PROGRESS_DEFAULTS = {"step": 0, "total_steps": None, "epoch": 0.0, "percent": 0.0, "eta_seconds": None}


class JobErrorSchema(ma.Schema):
    """Why a job failed."""

    code = fields.String()
    message = fields.String()


class JobStateSchema(ma.Schema):
    """What every job shows of its life: status, timing, attempts, error."""

    id = fields.UUID()
    status = fields.String(validate=validate.OneOf(JOB_STATUSES))
    is_terminal = fields.Method("_is_terminal")
    owner = fields.String()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    error = fields.Method("_error", allow_none=True)
    attempts = fields.Integer()
    worker = fields.String(allow_none=True)
    cancel_requested = fields.Boolean()

    def _is_terminal(self, job: dict) -> bool:
        return job["status"] in ("completed", "failed", "cancelled")

    def _error(self, job: dict) -> dict | None:
        if not job["error_code"]:
            return None
        return {"code": job["error_code"], "message": job["error_message"]}


class JobSchema(JobStateSchema):
    """A training job as users see it."""

    class Meta:
        example = JOB_EXAMPLE

    object = fields.Constant("training.job")
    job_name = fields.String()
    trainer_type = fields.String()
    base_model = fields.String()
    dataset_path = fields.String()
    dataset_id = fields.UUID(allow_none=True)
    hyperparameters = fields.Dict()
    metadata = fields.Dict()
    progress = fields.Method("_progress")
    metrics = fields.Method("_metrics")
    adapter_path = fields.String(allow_none=True)
    parent_job_id = fields.UUID(allow_none=True, metadata={"description": "The job this one continues."})
    children = fields.List(fields.UUID(), metadata={"description": "Continuous jobs that continue this one."})

    def _progress(self, job: dict) -> dict:
        return {**_PROGRESS_DEFAULTS, **job["progress"]}

    def _metrics(self, job: dict) -> dict:
        return {"train_loss": None, "trained_tokens": 0, "tokens_per_second": None, **job["metrics"]}

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        """marshmallow's dump, written out for whole job rows: field by field it was a poll's largest Python cost.

        Anything else (a partial row, only/exclude, a subclass) goes through marshmallow; a test holds both
        to the same output.
        """
        many = self.many if many is None else many
        rows = obj if many else [obj]
        if type(self) is not JobSchema or self.only or self.exclude or not all(
                (type(row) is dict or isinstance(row, Mapping)) and _JOB_ROW_KEYS <= row.keys() for row in rows):
            return super().dump(obj, many=many)
        dumped = [self._dump_row(row) for row in rows]
        return dumped if many else dumped[0]

    def _dump_row(self, job: Mapping) -> dict:
        """One full job row as JSON-ready values, as each declared field would serialise it."""
        # The Method fields' bodies are written in place (only JobSchema itself comes here, never a subclass).
        status, error_code = job["status"], job["error_code"]
        return {
            "object": "training.job", "id": _text(job["id"]), "status": _text(status),
            "is_terminal": status in ("completed", "failed", "cancelled"), "owner": _text(job["owner"]),
            "created_at": _iso(job["created_at"]), "started_at": _iso(job["started_at"]),
            "finished_at": _iso(job["finished_at"]),
            "error": {"code": error_code, "message": job["error_message"]} if error_code else None,
            "attempts": None if job["attempts"] is None else int(job["attempts"]), "worker": _text(job["worker"]),
            "cancel_requested": None if job["cancel_requested"] is None else bool(job["cancel_requested"]),
            "job_name": _text(job["job_name"]), "trainer_type": _text(job["trainer_type"]),
            "base_model": _text(job["base_model"]), "dataset_path": _text(job["dataset_path"]),
            "dataset_id": _text(job["dataset_id"]),
            "hyperparameters": None if job["hyperparameters"] is None else dict(job["hyperparameters"]),
            "metadata": None if job["metadata"] is None else dict(job["metadata"]),
            "progress": {**_PROGRESS_DEFAULTS, **job["progress"]},
            "metrics": {"train_loss": None, "trained_tokens": 0, "tokens_per_second": None, **job["metrics"]},
            "adapter_path": _text(job["adapter_path"]),
            "parent_job_id": _text(job["parent_job_id"]),
            "children": None if job["children"] is None else [str(child) for child in job["children"]],
        }


# Built once: a schema's construction deep-copies its fields, which cost as much as dumping a page.
_JOB_SCHEMA = JobSchema()

# What JobSchema's fast dump reads; a row lacking any of them goes through marshmallow.
_JOB_ROW_KEYS = frozenset({
    "id", "status", "owner", "created_at", "started_at", "finished_at", "error_code", "error_message", "attempts",
    "worker", "cancel_requested", "job_name", "trainer_type", "base_model", "dataset_path", "dataset_id",
    "hyperparameters", "metadata", "progress", "metrics", "adapter_path", "parent_job_id", "children"})


def _text(value: Any) -> str | None:
    """As marshmallow's String and UUID fields serialise."""
    return None if value is None else str(value)


def _iso(value: Any) -> str | None:
    """As marshmallow's DateTime field serialises (ISO 8601)."""
    return None if value is None else value.isoformat()


class JobListSchema(ma.Schema):
    """A page of jobs."""

    class Meta:
        example = {"object": "list", "data": [JOB_EXAMPLE], "has_more": False}

    object = fields.Constant("list")
    data = fields.List(fields.Nested(JobSchema))
    has_more = fields.Boolean()


def dump_job_page(rows: list[Mapping], has_more: bool) -> dict:
    """JobListSchema().dump({"data": rows, "has_more": has_more}), without marshmallow's walk of List and Nested.

    Each row goes through JobSchema.dump as Nested would send it (its fast path for full rows); a test holds
    both to the same output.
    """
    return {"object": "list", "data": [_JOB_SCHEMA.dump(row) for row in rows],
            "has_more": None if has_more is None else bool(has_more)}


class CheckpointMetricsSchema(ma.Schema):
    """Losses when a checkpoint was saved."""

    train_loss = fields.Float(allow_none=True)
    eval_loss = fields.Float(allow_none=True)


class CheckpointSchema(ma.Schema):
    """A complete checkpoint of a training job."""

    class Meta:
        example = CHECKPOINT_EXAMPLE

    object = fields.Constant("training.job.checkpoint")
    id = fields.String(metadata={"example": "checkpoint-200"})
    step = fields.Integer()
    created_at = fields.DateTime()
    metrics = fields.Method("_metrics")

    def _metrics(self, checkpoint: dict) -> dict:
        return {"train_loss": None, "eval_loss": None, **checkpoint["metrics"]}


class CheckpointListSchema(ma.Schema):
    """A job's checkpoints, oldest first."""

    class Meta:
        example = {"object": "list", "data": [CHECKPOINT_EXAMPLE]}

    object = fields.Constant("list")
    data = fields.List(fields.Nested(CheckpointSchema))


class EventSchema(ma.Schema):
    """Something that happened to a job."""

    class Meta:
        example = EVENT_EXAMPLE

    object = fields.Constant("training.job.event")
    id = fields.Integer()
    created_at = fields.DateTime()
    level = fields.String()
    type = fields.String()
    message = fields.String()
    data = fields.Dict()


class EventListSchema(ma.Schema):
    """A page of a job's events."""

    class Meta:
        example = {"object": "list", "data": [EVENT_EXAMPLE], "has_more": True}

    object = fields.Constant("list")
    data = fields.List(fields.Nested(EventSchema))
    has_more = fields.Boolean()


def _no_control_characters(value: str) -> None:
    """Usernames end up in logs and the audit log, where a newline or escape sequence could forge lines."""
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in value):
        raise ma.ValidationError("Must not contain control characters.")


def _password(**kwargs) -> fields.String:
    """A new password: as long as user creation requires."""
    return fields.String(required=True, load_only=True,
                         validate=validate.Length(min=MIN_PASSWORD_LENGTH, max=1024), **kwargs)


class LoginSchema(InputSchema):
    """Credentials."""

    class Meta(InputSchema.Meta):
        example = {"username": "maria", "password": "correct-horse-battery-staple"}

    username = fields.String(required=True, validate=[validate.Length(min=1, max=64), _no_control_characters])
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024), load_only=True)


class PasswordChangeSchema(InputSchema):
    """The caller's current password and the new one."""

    class Meta(InputSchema.Meta):
        example = {"current_password": "an-old-password-of-maria", "new_password": "tram-lantern-orbit-quill-7"}

    current_password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))
    new_password = _password(metadata={"description": f"At least {MIN_PASSWORD_LENGTH} characters."})


class PasswordResetSchema(InputSchema):
    """The new password an admin sets for a user."""

    class Meta(InputSchema.Meta):
        example = {"password": "tram-lantern-orbit-quill-7"}

    password = _password(metadata={"description": f"At least {MIN_PASSWORD_LENGTH} characters; tell the user "
                                                  "through a channel of your own."})


class LogoutSchema(InputSchema):
    """Optionally the refresh token, so logging out revokes it too."""

    class Meta(InputSchema.Meta):
        example = {"refresh_token": TOKEN}

    refresh_token = fields.String(validate=validate.Length(max=4096))


class TokenSchema(ma.Schema):
    """A token pair."""

    class Meta:
        example = {"access_token": TOKEN, "refresh_token": TOKEN, "token_type": "Bearer", "expires_in": 900}

    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()


class UserCreateSchema(InputSchema):
    """A user to create."""

    class Meta(InputSchema.Meta):
        example = {"username": "maria", "password": "correct-horse-battery-staple", "role": "trainer"}

    # The pattern's $ also matches before a trailing newline; the control character check refuses that.
    username = fields.String(required=True, validate=[_no_control_characters, validate.Regexp(
        r"^[A-Za-z0-9_.-]{3,64}$", error="Must be 3 to 64 letters, digits, '.', '_' or '-'.")])
    password = _password()
    role = fields.String(required=True, validate=validate.OneOf(ROLES))


class UserSchema(ma.Schema):
    """A user as shown to admins and to themselves."""

    class Meta:
        example = USER_EXAMPLE

    object = fields.Constant("user")
    id = fields.Integer()
    username = fields.String()
    role = fields.String()
    disabled = fields.Boolean()
    created_at = fields.DateTime()


class UserListQuerySchema(InputSchema):
    """The cursor for listing users."""

    after = fields.Integer(validate=validate.Range(min=0))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class UserListSchema(ma.Schema):
    """A page of users."""

    class Meta:
        example = {"object": "list", "data": [USER_EXAMPLE], "has_more": False}

    object = fields.Constant("list")
    data = fields.List(fields.Nested(UserSchema))
    has_more = fields.Boolean()


class HealthSchema(ma.Schema):
    """Liveness, with the number of active jobs when PostgreSQL answers."""

    class Meta:
        example = {"status": "healthy", "service": "clara-api", "port": 8000, "active_jobs": 1,
                   "max_concurrent_jobs": 1, "timestamp": FINISHED_AT}

    status = fields.String(metadata={"example": "healthy"})
    service = fields.String()
    port = fields.Integer()
    active_jobs = fields.Integer(allow_none=True)
    max_concurrent_jobs = fields.Integer()
    timestamp = fields.String(metadata={"format": "date-time"})


class ReadySchema(ma.Schema):
    """Readiness: each dependency's check, and when one is down, the error naming it."""

    class Meta:
        example = {"status": "ready", "checks": {"database": "ok", "redis": "ok", "workers": "ok"}}

    status = fields.String(validate=validate.OneOf(("ready", "not_ready")))
    checks = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"example": {"database": "ok", "redis": "ok", "workers": "ok"}})
    error = fields.Nested("ErrorBodySchema", required=False)
