"""Workers that die or shut down mid-training: every job still ends completed once, from its checkpoints."""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2
import pytest
import redis
import requests
from celery import Celery

# Fifty-odd seconds of training on the tiny model: a worker that waited for the job instead of handing it
# back would finish it itself.
LONG_JOB_STEPS = 1500
SHUTDOWN_DEADLINE_SECONDS = 45
# Short, so that a killed attempt's job is free again within seconds.
LEASE_SECONDS = 10


def _lease(database_url: str, job_id: str) -> tuple[str | None, object]:
    """The job's lease owner and expiry, straight from PostgreSQL."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT lease_owner, lease_expires_at FROM training_jobs WHERE id = %s", (job_id,))
            return cur.fetchone()
    finally:
        conn.close()


def test_sigterm_checkpoints_hands_the_job_back_and_another_worker_resumes_it(make_stack, dataset,
                                                                                settings_overrides):
    stack = make_stack(max_attempts=2)
    stack.start_api()
    stack.start_workers("first", "second")
    admin = stack.login()
    job_id = stack.submit(admin, dataset, max_steps=LONG_JOB_STEPS, save_steps=500)
    running = stack.wait_for_job(admin, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 50,
                                 timeout=180)
    leaving = running["worker"].split("@", 1)[0]
    staying = "second" if leaving == "first" else "first"

    stack.signal(leaving, signal.SIGTERM)
    began = time.monotonic()
    assert stack.wait_exit(leaving, timeout=SHUTDOWN_DEADLINE_SECONDS) == 0
    took = time.monotonic() - began

    events = stack.events(admin, job_id)
    handed = [e for e in events if e["message"].startswith("Handed back at step ")]
    assert len(handed) == 1, [e["message"] for e in events]
    step = handed[0]["data"]["step"]
    assert 0 < step < LONG_JOB_STEPS
    assert handed[0]["message"] == f"Handed back at step {step} by {running['worker']} shutting down."
    # The checkpoint of the hand-back step was saved before the job went back.
    assert f"Checkpoint saved at step {step}." in [e["message"] for e in events]

    done = stack.wait_for_job(admin, job_id, lambda j: j["is_terminal"], timeout=300)
    assert done["status"] == "completed", done
    # The hand-back did not count against max_attempts (2): attempt 2 ran, and a third was never needed.
    assert done["attempts"] == 2 and done["worker"].startswith(f"{staying}@")
    assert done["metrics"]["resumed_from_step"] == step
    assert done["progress"]["step"] == LONG_JOB_STEPS
    messages = [e["message"] for e in stack.events(admin, job_id)]
    started = [m for m in messages if m.startswith("Attempt ")]
    assert len(started) == 2 and started[1].startswith(f"Attempt 2 started on {staying}@")
    assert messages.index(f"Resuming from the checkpoint at step {step}.") > messages.index(started[1])
    assert messages.count("Job completed.") == 1
    assert _lease(settings_overrides["database_url"], job_id)[0] is None
    # The message came back exactly once and is acknowledged now: nothing left queued or unacknowledged.
    broker = redis.Redis.from_url(settings_overrides["redis_url"])
    assert broker.llen("gpu") == 0 and broker.hlen("unacked") == 0
    print(f"worker shut down {took:.1f} s after SIGTERM, handing back at step {step}")


def test_sigterm_on_an_idle_worker_stops_it_at_once(make_stack):
    stack = make_stack()
    stack.start_api()
    stack.start_workers("idle")
    stack.signal("idle", signal.SIGTERM)
    assert stack.wait_exit("idle", timeout=30) == 0
    assert requests.get(f"{stack.url}/health", timeout=5).status_code == 200


KILLS = 5
JOBS = 3
CHAOS_STEPS = 600
CHAOS_SAVE_STEPS = 25


@dataclass
class Kill:
    """One SIGKILL of a training attempt's worker child."""

    job_id: str
    worker: str
    at: datetime
    step: int
    checkpoint: int


def _plan(rng: random.Random) -> list[list[int]]:
    """For each job, the steps after which its running attempt is killed: five in all, in random places."""
    quotas = [1] * JOBS
    for _ in range(KILLS - JOBS):
        quotas[rng.randrange(JOBS)] += 1
    return [sorted(rng.sample(range(2 * CHAOS_SAVE_STEPS, int(CHAOS_STEPS * 0.8), 15), quota)) for quota in quotas]


def _newest_checkpoint(stack, headers: dict[str, str], job_id: str) -> int:
    """Step of the newest checkpoint the API lists for a job, 0 for none."""
    response = requests.get(f"{stack.url}/api/training/jobs/{job_id}/checkpoints", headers=headers, timeout=10)
    return max((c["step"] for c in response.json()["data"]), default=0)


def _at(event: dict) -> datetime:
    return datetime.fromisoformat(event["created_at"])


@pytest.mark.slow
def test_five_sigkills_across_three_jobs_each_job_completes_exactly_once(make_stack, dataset, settings_overrides,
                                                                          storage):
    seed = int(os.environ.get("CLARA_TEST_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (set CLARA_TEST_CHAOS_SEED to replay the kill plan)")
    rng = random.Random(seed)
    stack = make_stack(max_attempts=KILLS + 2, lease_seconds=LEASE_SECONDS)
    stack.start_api()
    stack.start_workers("first", "second")
    admin = stack.login()
    jobs = [stack.submit(admin, dataset, max_steps=CHAOS_STEPS, save_steps=CHAOS_SAVE_STEPS, save_total_limit=2)
            for _ in range(JOBS)]
    plan = dict(zip(jobs, _plan(rng), strict=True))
    kills: list[Kill] = []
    # The step each job showed when the test first saw an attempt of it running. A new attempt shows the step its
    # killed predecessor reported last until it reports its own, after it has resumed, and that step may already
    # be past the next planned kill: killing then would kill an attempt still starting, before it resumed.
    first_seen: dict[tuple[str, str], int] = {}
    duplicate_sent = False
    deadline = time.monotonic() + 420
    while any(plan.values()):
        assert time.monotonic() < deadline, f"kills left undone: {plan}"
        for job_id, steps in list(plan.items()):
            job = stack.job(admin, job_id)
            if job["is_terminal"] and steps:
                # It outran the test's polling; another job takes its kills, so that five still happen.
                others = [other for other in jobs if other != job_id and not stack.job(admin, other)["is_terminal"]]
                assert others, f"every job ended before all kills; kills so far: {kills}"
                plan[others[0]] = sorted(plan[others[0]] + steps)
                steps.clear()
            already = {kill.worker for kill in kills}
            if not steps or job["status"] != "running" or job["worker"] in already:
                continue
            if not duplicate_sent:
                # A second delivery of a running job, as a Redis redelivery or a reconciler makes: the
                # live lease must keep it from training the job alongside the attempt that holds it.
                Celery(broker=settings_overrides["redis_url"]).send_task("clara.train_job", args=[job_id],
                                                                         queue="gpu")
                duplicate_sent = True
            step = (job["progress"] or {}).get("step", 0)
            if first_seen.setdefault((job_id, job["worker"]), step) == step or step < steps[0]:
                continue
            checkpoint = _newest_checkpoint(stack, admin, job_id)
            time.sleep(rng.uniform(0, 0.5))  # a random moment inside a step or a checkpoint
            os.kill(int(job["worker"].rsplit("/", 1)[1]), signal.SIGKILL)
            print(f"{datetime.now(UTC)} killed {job['worker']} of {job_id} at step {job['progress']['step']}")
            kills.append(Kill(job_id, job["worker"], datetime.now(UTC), job["progress"]["step"], checkpoint))
            steps.pop(0)
        time.sleep(0.2)

    done = {job_id: stack.wait_for_job(admin, job_id, lambda j: j["is_terminal"], timeout=300) for job_id in jobs}
    logs = "".join(stack.log(name).read_text() for name in ("first", "second"))
    for job_id, job in done.items():
        mine = [kill for kill in kills if kill.job_id == job_id]
        assert job["status"] == "completed", job
        assert job["progress"]["step"] == CHAOS_STEPS
        # One attempt per kill plus the one that finished: the duplicate delivery never started one.
        assert job["attempts"] == len(mine) + 1, (job, mine)
        events = stack.events(admin, job_id)
        started = [e for e in events if e["message"].startswith("Attempt ")]
        assert [e["data"]["attempt"] for e in started] == list(range(1, len(mine) + 2))
        for kill, before, after in zip(mine, started, started[1:], strict=False):
            assert before["data"]["worker"] == kill.worker
            # No two attempts at once: the next began only after the killed one was dead and its lease had
            # lapsed (it was renewed at most a third of a lease before the kill).
            assert (_at(after) - kill.at).total_seconds() >= LEASE_SECONDS * 2 / 3 - 1, (kill, after)
        resumed = [e["data"]["resumed_from_step"] for e in events if "resumed_from_step" in e["data"]]
        # Each attempt after a kill resumed, from a checkpoint no older than the newest listed before the kill
        # (newer ones are saved between that listing and the kill).
        assert len(resumed) == len(mine), (resumed, mine)
        assert all(step >= kill.checkpoint for step, kill in zip(resumed, mine, strict=True)), (resumed, mine)
        # Completed exactly once: one end event, one published adapter, nothing half-written left over.
        assert [e["message"] for e in events].count("Job completed.") == 1
        assert logs.count(f"the adapter is in {storage['outputs'] / job_id}.") == 1
    assert sorted(path.name for path in storage["outputs"].iterdir()) == sorted(jobs)
    assert "is held by another attempt" in logs
    broker = redis.Redis.from_url(settings_overrides["redis_url"])
    assert broker.llen("gpu") == 0


def test_a_hand_back_frees_the_job_at_once_and_uses_up_no_attempt(database_url):
    from auth.users import create_user
    from records import attempts, jobs
    from records.db import Database
    from records.jobs import Claim

    db = Database(database_url)
    owner = create_user(db, "tina", "tina-password-long", "trainer")
    job = jobs.create_job(db, job_name="hand-back", trainer_type="lora", base_model="m", dataset_path="d.jsonl",
                          hyperparameters={}, metadata={}, owner_id=owner["id"])
    assert attempts.claim(db, job["id"], attempt_id="a1", worker="w1/1", lease_seconds=600,
                          max_attempts=1).outcome is Claim.CLAIMED
    assert attempts.hand_back(db, job["id"], "a1", step=7, worker="w1/1")
    assert jobs.get_job(db, job["id"])["status"] == "queued"
    # Released, not left to lapse (600 s), and not counted against max_attempts=1.
    again = attempts.claim(db, job["id"], attempt_id="a2", worker="w2/2", lease_seconds=600, max_attempts=1)
    assert again.outcome is Claim.CLAIMED and again.job["attempts"] == 2
    # The attempt that handed the job back can no longer write to it.
    assert not attempts.hand_back(db, job["id"], "a1", step=7, worker="w1/1")
    assert not attempts.finish(db, job["id"], "a1", "completed", "Job completed.")
    db.reset()
