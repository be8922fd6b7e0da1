"""Validation messages are flattened so every bad field is named in full."""

from __future__ import annotations

import pytest

from api.errors import flatten_messages


@pytest.mark.parametrize("messages,expected", [
    ({"job_name": ["Missing data for required field."]}, {"job_name": ["Missing data for required field."]}),
    ({"hyperparameters": {"lora_rank": ["Too big."]}}, {"hyperparameters.lora_rank": ["Too big."]}),
    ({"_schema": ["Invalid input type."]}, {"body": ["Invalid input type."]}),
    ({"hyperparameters": {"_schema": ["Bad."]}}, {"hyperparameters": ["Bad."]}),
    ({"target_modules": {0: ["Not a string."]}}, {"target_modules.0": ["Not a string."]}),
])
def test_flatten_messages(messages, expected):
    assert flatten_messages(messages) == expected
