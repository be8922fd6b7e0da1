"""Paths a request names stay inside their directory, symlinks included."""

from __future__ import annotations

import json

import pytest

from api.paths import PathRejected, resolve_base_model, resolve_dataset, resolve_inside
from settings import load

HUB_IDS = ("gpt2", "meta-llama/Llama-3.1-8B", "TinyLlama/TinyLlama-1.1B-Chat-v1.0")


@pytest.fixture
def settings(tmp_path):
    for name in ("data", "models", "outputs"):
        (tmp_path / name).mkdir()
    (tmp_path / "models" / "tiny").mkdir()
    (tmp_path / "data" / "ok.jsonl").write_text(json.dumps({"text": "Guten Tag"}) + "\n")
    return load({"data_dir": tmp_path / "data", "models_dir": tmp_path / "models",
                 "output_dir": tmp_path / "outputs", "allow_hub_models": True,
                 "hub_model_allowlist": HUB_IDS}, environ={})


@pytest.mark.parametrize("requested", ["../x", "a/../../x", "/etc/passwd", "", "a\\b", "a\x00b"])
def test_resolve_inside_refuses_escapes(tmp_path, requested):
    with pytest.raises(PathRejected):
        resolve_inside(tmp_path, requested)


def test_resolve_inside_refuses_symlink_out(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(PathRejected, match="outside"):
        resolve_inside(root, "link/secret")


def test_resolve_inside_accepts_nested_path(tmp_path):
    assert resolve_inside(tmp_path, "a/b.jsonl") == tmp_path.resolve() / "a" / "b.jsonl"


def test_local_model_directory_wins(settings):
    assert resolve_base_model(settings, "tiny") == str(settings.models_dir / "tiny")


@pytest.mark.parametrize("hub_id", HUB_IDS)
def test_hub_ids_pass_when_allowed(settings, hub_id):
    assert resolve_base_model(settings, hub_id) == hub_id


@pytest.mark.parametrize("hub_id", ["gpt2-xl", "meta-llama/Llama-3.1-70B", "tinyllama/tinyllama-1.1b-chat-v1.0"])
def test_hub_ids_off_the_allowlist_are_refused(settings, hub_id):
    with pytest.raises(PathRejected, match="CLARA_HUB_MODEL_ALLOWLIST"):
        resolve_base_model(settings, hub_id)


def test_hub_models_are_off_by_default(tmp_path):
    assert load({"models_dir": tmp_path}, environ={}).allow_hub_models is False
    assert load({"models_dir": tmp_path}, environ={}).hub_model_allowlist == ()


def test_hub_ids_refused_when_not_allowed(settings):
    import dataclasses

    offline = dataclasses.replace(settings, allow_hub_models=False)
    with pytest.raises(PathRejected, match="no model directory"):
        resolve_base_model(offline, "gpt2")


@pytest.mark.parametrize("requested", ["../models", "/tmp", "a/b/c", "..", "./tiny/../.."])
def test_model_paths_out_of_bounds_are_refused(settings, requested):
    with pytest.raises(PathRejected):
        resolve_base_model(settings, requested)


def test_dataset_checks(settings):
    assert resolve_dataset(settings, "ok.jsonl") == settings.data_dir / "ok.jsonl"
    (settings.data_dir / "bad.jsonl").write_text("{}\n")
    with pytest.raises(PathRejected, match="line 1"):
        resolve_dataset(settings, "bad.jsonl")
    with pytest.raises(PathRejected, match="jsonl"):
        resolve_dataset(settings, "ok.csv")
    with pytest.raises(PathRejected, match="no file"):
        resolve_dataset(settings, "missing.jsonl")
