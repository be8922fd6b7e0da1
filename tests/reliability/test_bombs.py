"""The bomb suite: every resource attack of the hardening review, against a live API and CPU worker.

Each attack is a few kilobytes to a few tens of megabytes of input that used to make the API (or a worker) hold
hundreds of megabytes, run without end or answer 500. Each must now answer 4xx (or, where the work is a job, end
that job failed with a code), and the API's peak RSS may grow by less than 100 MB while it runs: the peak is reset
through /proc/<pid>/clear_refs before each attack and read back from VmHWM after it, so a spike in between counts.
One stack serves the whole module; the attacks run in the order below and leave nothing the next one trips over.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from psycopg2.extras import Json

from tests.conftest import TEST_SECRET, fresh_database
from tests.reliability.conftest import Stack

MB = 1024 * 1024
API_GROWTH_LIMIT = 100 * MB
WORKER_GROWTH_LIMIT = 150 * MB
JOB_TIMEOUT = 120


def _status_field(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def _children(pid: int) -> list[int]:
    """The child processes of a process (a Celery worker's pool children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


class Peak:
    """The growth of a process's peak RSS over one attack."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+), so VmHWM is this attack's peak.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.start = _status_field(pid, "VmRSS")

    def growth(self) -> int:
        """How far the peak RSS rose above the RSS at the start, in bytes."""
        return _status_field(self.pid, "VmHWM") - self.start


@pytest.fixture(scope="module")
def bomb_stack(template_database: str, reliability_redis_db: int, tiny_model_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str], dict[str, Path]]]:
    """A live API and one CPU worker on a database and storage of their own, with an admin's headers."""
    from tests.conftest import REDIS_BASE_URL

    base = tmp_path_factory.mktemp("bombs")
    dirs = {name: base / name for name in ("data", "models", "outputs", "datasets", "chroma", "checkpoints", "cache")}
    for path in dirs.values():
        path.mkdir()
    shutil.copytree(tiny_model_dir, dirs["models"] / "tiny-llama")
    with fresh_database("clara_test_bombs", template_database) as database_url:
        settings = {"env": "testing", "secret_key": TEST_SECRET, "database_url": database_url,
                    "redis_url": f"{REDIS_BASE_URL}/{reliability_redis_db}", "allow_hub_models": False,
                    "ready_timeout": 0.5, "broker_timeout": 2.0, "log_level": "WARNING",
                    "data_dir": dirs["data"], "models_dir": dirs["models"], "output_dir": dirs["outputs"],
                    "datasets_dir": dirs["datasets"], "checkpoints_dir": dirs["checkpoints"],
                    "cache_dir": dirs["cache"], "chroma_path": dirs["chroma"]}
        stack = Stack.from_settings(settings, base)
        try:
            stack.start_api()
            stack.start_workers("cpu-worker", queue="cpu")
            headers = stack.login()
            _warm_up(stack, headers, dirs)
            yield stack, headers, dirs
        except BaseException:
            for name in stack.processes:
                print(f"----- {name} log -----\n{stack.log(name).read_text()[-6000:]}")
            raise
        finally:
            stack.stop_all()


def _warm_up(stack: Stack, headers: dict[str, str], dirs: dict[str, Path]) -> None:
    """Send one harmless request of each kind, so that lazy imports (pyarrow, matplotlib) are not counted."""
    records = "".join(json.dumps({"text": f"Ein harmloser Satz Nummer {i}."}) + "\n" for i in range(20))
    dataset = _upload(stack, headers, "warm.jsonl", records.encode())
    if dataset.status_code == 202:
        _wait_dataset(stack, headers, dataset.json()["id"])
    job_id = _completed_job(stack, dirs, adapter_bytes=1024, events=10)
    for path in ("metrics", "loss.png", "adapter"):
        response = requests.get(f"{stack.url}/api/training/jobs/{job_id}/{path}", headers=headers, timeout=60)
        assert response.status_code == 200, response.text[:500]
    requests.get(f"{stack.url}/ready", timeout=10)


def _upload(stack: Stack, headers: dict[str, str], filename: str, content: bytes, **form: str) -> requests.Response:
    return requests.post(f"{stack.url}/api/datasets/upload", headers=headers, timeout=120,
                         files={"file": (filename, io.BytesIO(content))}, data={"name": "bomb", **form})


def _wait_dataset(stack: Stack, headers: dict[str, str], dataset_id: str) -> dict[str, Any]:
    """Poll a dataset until its job has ended."""
    import time

    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        dataset = requests.get(f"{stack.url}/api/datasets/{dataset_id}", headers=headers, timeout=10).json()
        if dataset["status"] in ("completed", "failed", "cancelled"):
            return dataset
        time.sleep(0.3)
    raise AssertionError(f"dataset {dataset_id} did not end within {JOB_TIMEOUT} s")


def _completed_job(stack: Stack, dirs: dict[str, Path], adapter_bytes: int, events: int) -> str:
    """Record a completed job whose adapter holds one file of adapter_bytes, with that many progress events."""
    job_id = uuid.uuid4()
    adapter = dirs["outputs"] / str(job_id)
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with (adapter / "adapter_model.safetensors").open("wb") as out:
        out.truncate(adapter_bytes)  # sparse: the disk holds nothing, the download reads every byte
    conn = psycopg2.connect(stack.env["CLARA_DATABASE_URL"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM users WHERE username = 'admin'")
        owner = cur.fetchone()[0]
        cur.execute("INSERT INTO training_jobs (id, job_name, trainer_type, status, base_model, dataset_path,"
                    " hyperparameters, owner_id, adapter_path, finished_at) VALUES"
                    " (%s, 'bomb', 'lora', 'completed', 'tiny-llama', 'x.jsonl', '{}', %s, %s, now())",
                    (str(job_id), owner, str(adapter)))
        cur.execute("INSERT INTO job_events (job_id, level, type, message, data)"
                    " SELECT %s, 'info', 'progress', 'Step.', jsonb_build_object('step', s, 'train_loss', 1.0 / s,"
                    " 'learning_rate', 0.0002, 'tokens_per_second', 100.0)"
                    " FROM generate_series(1, %s) AS s", (str(job_id), events))
    conn.close()
    return str(job_id)


def _assert_refused(response: requests.Response, *statuses: int) -> dict[str, Any]:
    """The answer is one of the 4xx statuses with Clara's JSON error shape; returns the error."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return error


def _refused_or_failed(stack: Stack, headers: dict[str, str], response: requests.Response) -> str:
    """An upload is refused at once (4xx) or accepted as a job that then fails; returns the error code."""
    if response.status_code == 202:
        dataset = _wait_dataset(stack, headers, response.json()["id"])
        assert dataset["status"] == "failed", dataset
        return dataset["error"]["code"]
    return _assert_refused(response, 413, 422)["code"]


@pytest.fixture
def api_peak(bomb_stack) -> Iterator[Peak]:
    """The API's peak RSS over this attack, checked against the limit afterwards."""
    stack = bomb_stack[0]
    peak = Peak(stack.processes["api"].pid)
    yield peak
    assert peak.growth() < API_GROWTH_LIMIT, f"the API's peak RSS grew by {peak.growth() / MB:.0f} MB"


@pytest.fixture
def worker_peak(bomb_stack) -> Iterator[list[Peak]]:
    """The CPU worker's children's peak RSS over this attack, checked against a limit afterwards."""
    stack = bomb_stack[0]
    peaks = [Peak(pid) for pid in _children(stack.processes["cpu-worker"].pid)]
    yield peaks
    for peak in peaks:
        if Path(f"/proc/{peak.pid}").exists():
            assert peak.growth() < WORKER_GROWTH_LIMIT, f"a worker's peak RSS grew by {peak.growth() / MB:.0f} MB"


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def test_parquet_bomb_is_refused(bomb_stack, api_peak, worker_peak) -> None:
    """A few KB of zstd Parquet holding one 200 MB string never gets decoded whole."""
    stack, headers, _ = bomb_stack
    content = _parquet(pa.table({"text": ["a" * (200 * MB)]}))
    assert len(content) < 100_000
    code = _refused_or_failed(stack, headers, _upload(stack, headers, "bomb.parquet", content))
    assert code in ("payload_too_large", "record_too_large", "invalid_records", "upload_too_large")


@pytest.mark.parametrize("filename, line", [
    ("long.jsonl", b'{"text": "' + b"a" * (40 * MB) + b'"}\n'),
    ("long.csv", b'text\n"' + b"a" * (40 * MB) + b'"\n'),
])
def test_one_huge_record_is_refused(bomb_stack, api_peak, worker_peak, filename: str, line: bytes) -> None:
    """A JSONL line or CSV field of 40 MB is more than one record may be."""
    stack, headers, _ = bomb_stack
    code = _refused_or_failed(stack, headers, _upload(stack, headers, filename, line))
    assert code in ("record_too_large", "invalid_records", "payload_too_large")


def test_repeated_template_field_is_refused(bomb_stack, api_peak) -> None:
    """A template that repeats a field thousands of times would blow each record up; it is refused."""
    stack, headers, _ = bomb_stack
    body = {"name": "amplified", "sources": [{"type": "postgres", "limit": 10}],
            "format": {"kind": "text", "mapping": {"text": "{content}" * 2222}}}
    response = requests.post(f"{stack.url}/api/datasets", headers=headers, json=body, timeout=30)
    error = _assert_refused(response, 422)
    assert any("mapping" in name for name in error["details"]["fields"]), error


def test_dataset_name_with_a_newline_is_refused(bomb_stack, api_peak) -> None:
    """A newline in a dataset name would break every download's Content-Disposition header."""
    stack, headers, _ = bomb_stack
    response = _upload(stack, headers, "ok.jsonl", b'{"text": "Hallo Welt, ein Satz."}\n', name="bad\nname")
    error = _assert_refused(response, 422)
    assert "name" in error["details"]["fields"], error


def test_parquet_timestamp_out_of_range_is_refused(bomb_stack, api_peak) -> None:
    """A timestamp past year 9999 cannot become a Python datetime; it is a bad record, not a crash."""
    stack, headers, _ = bomb_stack
    table = pa.table({"id": pa.array([2**62], pa.timestamp("ms")), "text": ["Ein Satz mit Zeitstempel."]})
    code = _refused_or_failed(stack, headers, _upload(stack, headers, "time.parquet", _parquet(table)))
    assert code in ("invalid_records", "validation_error")


def test_submission_with_a_huge_record_is_refused(bomb_stack, api_peak) -> None:
    """Submission checks a bounded sample of the dataset: a 60 MB record is refused without being parsed whole."""
    stack, headers, dirs = bomb_stack
    (dirs["data"] / "huge.jsonl").write_bytes(b'{"text": "' + b"a" * (60 * MB) + b'"}\n')
    body = {"job_name": "huge", "base_model": "tiny-llama", "dataset_path": "huge.jsonl"}
    response = requests.post(f"{stack.url}/api/training/jobs", headers=headers, json=body, timeout=60)
    error = _assert_refused(response, 413, 422)
    assert "dataset_path" in json.dumps(error), error


def test_adapter_download_streams_and_is_bounded_per_user(bomb_stack, api_peak) -> None:
    """A 300 MB adapter streams through bounded memory; more concurrent downloads than allowed answer 429."""
    stack, headers, dirs = bomb_stack
    job_id = _completed_job(stack, dirs, adapter_bytes=300 * MB, events=1)
    url = f"{stack.url}/api/training/jobs/{job_id}/adapter"
    with requests.get(url, headers=headers, stream=True, timeout=120) as response:
        assert response.status_code == 200
        received = sum(len(chunk) for chunk in response.iter_content(MB))
    assert received > 0
    held = [requests.get(url, headers=headers, stream=True, timeout=60) for _ in range(8)]
    try:
        statuses = [response.status_code for response in held]
        assert 429 in statuses, statuses
        refused = held[statuses.index(429)]
        assert refused.json()["error"]["code"] and refused.headers.get("Retry-After")
    finally:
        for response in held:
            response.close()


def test_metrics_of_a_job_with_many_events_are_bounded(bomb_stack, api_peak) -> None:
    """300,000 progress events: the metrics and the plot read a bounded, downsampled series."""
    stack, headers, dirs = bomb_stack
    job_id = _completed_job(stack, dirs, adapter_bytes=1, events=300_000)
    metrics = requests.get(f"{stack.url}/api/training/jobs/{job_id}/metrics", headers=headers, timeout=60)
    assert metrics.status_code == 200
    train = metrics.json()["train"]
    assert len(train) <= 5000 and train[-1]["step"] == 300_000
    plot = requests.get(f"{stack.url}/api/training/jobs/{job_id}/loss.png", headers=headers, timeout=60)
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")


def test_ready_without_a_token_reveals_nothing(bomb_stack, api_peak) -> None:
    """Anonymous /ready answers from a cache and names no host, port or database user."""
    stack, _, _ = bomb_stack
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: requests.get(f"{stack.url}/ready", timeout=10), range(40)))
    for response in responses:
        assert response.status_code in (200, 503)
        for secret in ("127.0.0.1", ":5432", ":6379", "postgres@", "user=", "password"):
            assert secret not in response.text, response.text


def test_one_user_cannot_hold_every_stream(bomb_stack, api_peak) -> None:
    """A user past the per-user stream limit is refused while the process still has slots for others."""
    stack, headers, dirs = bomb_stack
    job_id = _running_job(stack)
    url = f"{stack.url}/api/training/jobs/{job_id}/events/stream"
    held = [requests.get(url, headers=headers, stream=True, timeout=30) for _ in range(4)]
    try:
        statuses = [response.status_code for response in held]
        assert statuses[0] == 200 and any(status in (429, 503) for status in statuses), statuses
        refused = held[[status in (429, 503) for status in statuses].index(True)]
        assert refused.json()["error"]["code"] in ("too_many_streams", "streams_busy")
    finally:
        for response in held:
            response.close()


def _running_job(stack: Stack) -> str:
    """Record a job that is running, so that its event stream stays open."""
    job_id = uuid.uuid4()
    conn = psycopg2.connect(stack.env["CLARA_DATABASE_URL"])
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO training_jobs (id, job_name, trainer_type, status, base_model, dataset_path,"
                    " hyperparameters, owner_id, started_at) SELECT"
                    " %s, 'stream', 'lora', 'running', 'tiny-llama', 'x.jsonl', %s, id, now()"
                    " FROM users WHERE username = 'admin'", (str(job_id), Json({})))
    conn.close()
    return str(job_id)


def test_many_concurrent_clients_never_read_as_database_down(bomb_stack, api_peak) -> None:
    """60 clients at once: more than the pool holds wait for a connection; none is told PostgreSQL is down."""
    stack, headers, _ = bomb_stack
    barrier = threading.Barrier(60)

    def poll(_: int) -> tuple[int, str]:
        barrier.wait()
        response = requests.get(f"{stack.url}/api/training/jobs?limit=100", headers=headers, timeout=60)
        return response.status_code, response.text

    with ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(poll, range(60)))
    for status, text in answers:
        assert "unavailable" not in text.lower(), text[:300]
        assert status == 200 or (status == 503 and "database_busy" in text), (status, text[:300])


@pytest.mark.parametrize("path, headers_extra", [
    ("/api/training/jobs/{job}/events?after={digits}", {}),
    ("/api/training/jobs/{job}/events/stream", {"Last-Event-ID": "{digits}"}),
])
def test_huge_cursor_is_refused(bomb_stack, api_peak, path: str, headers_extra: dict[str, str]) -> None:
    """A cursor of 5,000 digits is a bad request, not a ValueError."""
    stack, headers, _ = bomb_stack
    job_id = _running_job(stack)
    digits = "9" * 5000
    url = stack.url + path.format(job=job_id, digits=digits)
    extra = {key: value.format(digits=digits) for key, value in headers_extra.items()}
    response = requests.get(url, headers={**headers, **extra}, timeout=30, stream=True)
    _assert_refused(response, 400, 422)


def test_deeply_nested_json_is_refused(bomb_stack, api_peak) -> None:
    """100,000 nested brackets would exhaust the parser's recursion; the answer is 400."""
    stack, headers, _ = bomb_stack
    for path in ("/api/auth/login", "/api/training/jobs", "/api/datasets"):
        response = requests.post(stack.url + path, headers={**headers, "Content-Type": "application/json"},
                                 data="[" * 100_000, timeout=30)
        _assert_refused(response, 400, 413, 422)


def test_the_api_still_serves_after_the_bombs(bomb_stack) -> None:
    """After every attack the API answers, and the datasets stored before them are intact."""
    stack, headers, _ = bomb_stack
    assert requests.get(f"{stack.url}/health", timeout=10).status_code == 200
    listing = requests.get(f"{stack.url}/api/datasets", headers=headers, timeout=10).json()["data"]
    assert any(dataset["status"] == "completed" for dataset in listing)
