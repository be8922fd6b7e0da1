"""The training task's record keeping, run in-process against real PostgreSQL and a real tiny model."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from auth.users import create_user
from records import attempts, jobs
from records.jobs import Claim
from settings import load
from tasks.training import run_training_job
from trainers.config import LoraHyperparameters


@pytest.fixture
def settings(settings_overrides):
    return load(settings_overrides, environ={})


@pytest.fixture
def new_job(db, storage):
    owner = create_user(db, "tina", "tina-password-long", "trainer")

    def _new(**hyperparameters):
        params = LoraHyperparameters.from_dict({"max_steps": 4, "batch_size": 2, "max_seq_length": 64,
                                                **hyperparameters}).to_dict()
        return jobs.create_job(db, job_name="task-test", trainer_type="lora",
                               base_model=str(storage["models"] / "tiny-llama"),
                               dataset_path=str(storage["data"] / "demo-train.jsonl"),
                               hyperparameters=params, metadata={}, owner_id=owner["id"])

    return _new


def _claim(db, job_id, attempt="a1", lease=60, max_attempts=3):
    return attempts.claim(db, job_id, attempt_id=attempt, worker="test", lease_seconds=lease,
                          max_attempts=max_attempts)


def test_job_trains_to_completion_and_the_record_says_so(db, settings, new_job):
    job = new_job()
    published = []
    summary = run_training_job(db, settings, job["id"], worker="test-worker", publish=published.append)
    assert summary == {"job_id": str(job["id"]), "outcome": "completed"}
    done = jobs.get_job(db, job["id"])
    assert done["status"] == "completed" and done["attempts"] == 1 and done["worker"] == "test-worker"
    assert done["adapter_path"] == str(settings.output_dir / str(job["id"]))
    assert (settings.output_dir / str(job["id"]) / "adapter_model.safetensors").is_file()
    assert done["progress"]["step"] == 4 and done["progress"]["total_steps"] == 4
    assert done["metrics"]["trained_tokens"] > 0
    assert [p["step"] for p in published] == [1, 2, 3, 4]
    events, _ = jobs.list_events(db, job["id"], after=None, limit=100)
    assert events[-1]["message"] == "Job completed."
    assert any(e["message"].startswith("Attempt 1 started on test-worker") for e in events)


@pytest.mark.parametrize(("max_bytes", "entries_left"), [(2**30, 1), (1, 0)])
def test_the_token_cache_is_pruned_to_its_size_after_a_job(db, settings, new_job, max_bytes, entries_left):
    settings = dataclasses.replace(settings, token_cache_max_bytes=max_bytes)
    job = new_job()
    assert run_training_job(db, settings, job["id"], worker="w", publish=lambda _: None)["outcome"] == "completed"
    assert len(list((settings.cache_dir / "tokens").glob("*.npz"))) == entries_left


def test_unknown_target_module_fails_before_training_with_the_reason(db, settings, new_job):
    job = new_job(target_modules=["no_such_proj"])
    assert run_training_job(db, settings, job["id"], worker="w")["outcome"] == "failed"
    failed = jobs.get_job(db, job["id"])
    assert failed["error_code"] == "invalid_configuration"
    assert "no_such_proj" in failed["error_message"]
    assert failed["finished_at"] is not None and failed["adapter_path"] is None


def test_missing_base_model_fails_with_a_clear_reason(db, settings, new_job, storage):
    job = new_job()
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET base_model = %s WHERE id = %s",
                    (str(storage["models"] / "gone"), job["id"]))
    run_training_job(db, settings, job["id"], worker="w")
    failed = jobs.get_job(db, job["id"])
    assert failed["status"] == "failed" and "base_model" in failed["error_message"]


def test_a_live_lease_keeps_a_second_delivery_out(db, settings, new_job):
    job = new_job()
    assert _claim(db, job["id"], "first", lease=settings.lease_seconds).outcome is Claim.CLAIMED
    assert _claim(db, job["id"], "second").outcome is Claim.LEASED
    summary = run_training_job(db, settings, job["id"], worker="second-worker")
    assert summary["outcome"] == "leased"
    # The second delivery looks again just after the lease would lapse, not before and not much later.
    assert settings.lease_seconds < summary["retry_in"] <= settings.lease_seconds + 3
    assert jobs.get_job(db, job["id"])["attempts"] == 1


def test_an_expired_lease_lets_the_job_be_delivered_again(db, new_job):
    job = new_job()
    assert _claim(db, job["id"], "first").outcome is Claim.CLAIMED
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                    (job["id"],))
    result = _claim(db, job["id"], "second")
    assert result.outcome is Claim.CLAIMED and result.job["attempts"] == 2
    # The first attempt lost the job: whatever it reports or concludes is discarded.
    assert attempts.renew_lease(db, job["id"], "first", 60) is False
    assert attempts.finish(db, job["id"], "first", "completed", "done") is False
    assert jobs.get_job(db, job["id"])["status"] == "running"


def test_attempts_are_bounded(db, new_job):
    job = new_job()
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET attempts = 3 WHERE id = %s", (job["id"],))
    assert _claim(db, job["id"], max_attempts=3).outcome is Claim.EXHAUSTED
    failed = jobs.get_job(db, job["id"])
    assert failed["status"] == "failed" and failed["error_code"] == "max_attempts"


def test_cancelled_or_finished_jobs_are_not_run(db, settings, new_job):
    job = new_job()
    jobs.request_cancel(db, job["id"])
    assert run_training_job(db, settings, job["id"], worker="w")["outcome"] == "finished"
    assert jobs.get_job(db, job["id"])["attempts"] == 0
    assert _claim(db, uuid.uuid4()).outcome is Claim.MISSING


def test_redelivery_of_a_job_cancelled_while_its_worker_was_gone_ends_it(db, new_job):
    job = new_job()
    assert _claim(db, job["id"], "first").outcome is Claim.CLAIMED
    jobs.request_cancel(db, job["id"])
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                    (job["id"],))
    assert _claim(db, job["id"], "second").outcome is Claim.CANCELLED
    assert jobs.get_job(db, job["id"])["status"] == "cancelled"


def test_cancel_requested_while_running_stops_training(db, settings, new_job):
    job = new_job(max_steps=500)
    stopped_at = []

    def cancel_after_two(meta):
        if meta["step"] == 2:
            jobs.request_cancel(db, job["id"])
        stopped_at.append(meta["step"])

    run_training_job(db, dataclasses.replace(settings), job["id"], worker="w", publish=cancel_after_two)
    cancelled = jobs.get_job(db, job["id"])
    assert cancelled["status"] == "cancelled" and cancelled["adapter_path"] is None
    assert max(stopped_at) < 500  # cancel is checked about once a second, not every step
    assert not (settings.output_dir / str(job["id"])).exists()


def test_out_of_memory_fails_the_job_once_with_advice(db, settings, new_job, monkeypatch):
    import torch

    from trainers.loop import ClaraTrainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(ClaraTrainer, "training_step", out_of_memory)
    job = new_job()
    assert run_training_job(db, settings, job["id"], worker="w")["outcome"] == "failed"
    failed = jobs.get_job(db, job["id"])
    assert failed["error_code"] == "out_of_memory" and failed["attempts"] == 1
    assert "Lower batch_size" in failed["error_message"] and "qlora" in failed["error_message"]
    # A redelivery does not retry it blindly: the job has ended.
    assert run_training_job(db, settings, job["id"], worker="w2")["outcome"] == Claim.FINISHED.value


def test_time_limit_saves_a_checkpoint_that_the_api_lists(db, settings, new_job):
    from records import checkpoints

    job = new_job(max_steps=400, save_steps=1000)
    limited = dataclasses.replace(settings, job_time_limit=3)
    run_training_job(db, limited, job["id"], worker="w")
    failed = jobs.get_job(db, job["id"])
    assert failed["status"] == "failed" and failed["error_code"] == "time_limit"
    step = failed["progress"]["step"]
    assert 0 < step < 400 and f"a checkpoint at step {step} was saved" in failed["error_message"]
    listed = checkpoints.list_checkpoints(db, job["id"])
    assert [c["step"] for c in listed] == [step] and listed[0]["id"] == f"checkpoint-{step}"
    assert (settings.checkpoints_dir / str(job["id"]) / f"checkpoint-{step}" / "optimizer.pt").is_file()


def test_a_redelivery_resumes_from_the_last_checkpoint(db, settings, new_job):
    job = new_job(max_steps=8, save_steps=3)
    # The first attempt's worker died after its checkpoint at step 6: its lease lapsed, the rows say running.
    limited = dataclasses.replace(settings, job_time_limit=0)
    run_training_job(db, limited, job["id"], worker="w1")
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'running', error_code = NULL, finished_at = NULL"
                    " WHERE id = %s", (job["id"],))
    first_step = jobs.get_job(db, job["id"])["progress"]["step"]
    assert first_step == 1
    run_training_job(db, settings, job["id"], worker="w2")
    done = jobs.get_job(db, job["id"])
    assert done["status"] == "completed" and done["attempts"] == 2
    assert done["metrics"]["resumed_from_step"] == 1 and done["progress"]["step"] == 8
    events, _ = jobs.list_events(db, job["id"], after=None, limit=200)
    assert any(e["message"] == "Resuming from the checkpoint at step 1." for e in events)


def test_an_adapter_published_by_a_dead_attempt_completes_the_job(db, settings, new_job):
    job = new_job()
    run_training_job(db, settings, job["id"], worker="w1")
    metrics = jobs.get_job(db, job["id"])["metrics"]
    # As if the worker died between publishing the adapter and recording the job completed.
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'queued', adapter_path = NULL WHERE id = %s", (job["id"],))
    assert run_training_job(db, settings, job["id"], worker="w2")["outcome"] == "completed"
    done = jobs.get_job(db, job["id"])
    assert done["attempts"] == 2 and done["adapter_path"] == str(settings.output_dir / str(job["id"]))
    assert done["metrics"]["train_loss"] == metrics["train_loss"]


def test_a_resumed_attempt_shows_the_step_it_resumes_from(db, new_job, tmp_path):
    from tasks.training import JobReporter
    from trainers.checkpoints import METADATA_FILE, PREFIX, REQUIRED_FILES, CheckpointStore

    job = new_job(max_steps=100)
    # The dead attempt reported step 40 but saved its last checkpoint at step 25.
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'running', progress = '{\"step\": 40, \"total_steps\": 100}'"
                    " WHERE id = %s", (job["id"],))
    checkpoint = tmp_path / f"{PREFIX}25"
    checkpoint.mkdir()
    (checkpoint / METADATA_FILE).write_text("{}")
    for name in REQUIRED_FILES:
        (checkpoint / name).write_text("")
    JobReporter(db, job["id"], "a2", None).note_resume(CheckpointStore(tmp_path, 2))
    assert jobs.get_job(db, job["id"])["progress"] == {"step": 25, "total_steps": 100}
