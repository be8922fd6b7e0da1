"""Spec files: YAML and JSON, errors with line numbers, --set overrides, and the presets in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli.client import ClaraError
from cli.config_files import apply_overrides, load_spec

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_yaml_and_json_give_the_same_body(tmp_path):
    (tmp_path / "job.yaml").write_text("job_name: a\nhyperparameters:\n  max_steps: 5\n")
    (tmp_path / "job.json").write_text('{"job_name": "a", "hyperparameters": {"max_steps": 5}}')
    assert load_spec(tmp_path / "job.yaml") == load_spec(tmp_path / "job.json")


@pytest.mark.parametrize("name,text,expected", [
    ("bad.yaml", "job_name: a\n  bad: [\n", "line 2"),
    ("bad.json", '{"job_name": "a",\n  oops}', "line 2"),
    ("list.yaml", "- a\n- b\n", "one mapping"),
    ("empty.yaml", "", "one mapping"),
])
def test_bad_files_name_the_problem(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ClaraError, match=expected):
        load_spec(path)


def test_overrides_set_dotted_keys_with_yaml_values():
    spec = {"job_name": "a", "hyperparameters": {"max_steps": 5}}
    apply_overrides(spec, ("hyperparameters.max_steps=50", "hyperparameters.target_modules=[q_proj, v_proj]",
                           "metadata.team=faq", "base_model=null", "job_name=b=c"))
    assert spec == {"job_name": "b=c", "base_model": None, "metadata": {"team": "faq"},
                    "hyperparameters": {"max_steps": 50, "target_modules": ["q_proj", "v_proj"]}}


@pytest.mark.parametrize("assignment", ["no-equals", "=5", "job_name.x=1"])
def test_bad_overrides_are_reported(assignment):
    with pytest.raises(ClaraError, match="--set"):
        apply_overrides({"job_name": "a"}, (assignment,))


@pytest.mark.parametrize("preset", ["lora-tiny.yaml", "qlora-7b.yaml"])
def test_presets_are_valid_job_bodies_with_every_field(preset):
    from api.schemas import HyperparametersSchema, JobCreateSchema

    spec = load_spec(CONFIGS / preset)
    body = JobCreateSchema().load(spec)
    assert body["base_model"] and body["dataset_path"]
    # Every hyperparameter is written out, so the preset documents all of them.
    assert set(spec["hyperparameters"]) == set(HyperparametersSchema().fields)
    commented = (CONFIGS / preset).read_text()
    assert "# dataset_id:" in commented and "# parent_job_id:" in commented


def test_qlora_preset_quantises():
    spec = yaml.safe_load((CONFIGS / "qlora-7b.yaml").read_text())
    assert spec["trainer_type"] == "qlora" and spec["hyperparameters"]["quantization_bits"] == 4
