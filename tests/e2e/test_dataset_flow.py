"""Build a dataset over HTTP from the documents table, read it back, and train a LoRA job on its id."""

from __future__ import annotations

import io
import json

import psycopg2
import pyarrow.parquet as pq
import requests
from psycopg2.extras import Json

from dataset_builder.sources.postgres import ensure_documents_table

PARAGRAPHS = [
    ("sgb5-1", "§ 1 Solidarität und Eigenverantwortung",
     "Die Krankenversicherung als Solidargemeinschaft hat die Aufgabe, die Gesundheit der Versicherten zu erhalten, "
     "wiederherzustellen oder ihren Gesundheitszustand zu bessern. Die Versicherten sind für ihre Gesundheit "
     "mitverantwortlich; sie sollen durch eine gesundheitsbewusste Lebensführung dazu beitragen.", {"law": "SGB V"}),
    ("sgb5-2", "§ 2 Leistungen",
     "Die Krankenkassen stellen den Versicherten die Leistungen unter Beachtung des Wirtschaftlichkeitsgebots zur "
     "Verfügung, soweit diese Leistungen nicht der Eigenverantwortung der Versicherten zugerechnet werden. "
     "Fragen beantwortet die Geschäftsstelle unter info@kasse.example.de.", {"law": "SGB V"}),
    ("sgb5-3", "§ 3 Solidarische Finanzierung",
     "Die Leistungen und sonstigen Ausgaben der Krankenkassen werden durch Beiträge finanziert. Dazu entrichten die "
     "Mitglieder und die Arbeitgeber Beiträge, die sich in der Regel nach den beitragspflichtigen Einnahmen der "
     "Mitglieder richten.", {"law": "SGB V"}),
    ("bdsg-1", "§ 1 Anwendungsbereich des Gesetzes",
     "Dieses Gesetz gilt für die Verarbeitung personenbezogener Daten durch öffentliche Stellen des Bundes und durch "
     "nichtöffentliche Stellen, soweit die Verarbeitung ganz oder teilweise automatisiert erfolgt.", {"law": "BDSG"}),
]


def _load_documents(database_url: str) -> None:
    ensure_documents_table(database_url)
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        for doc_id, title, content, metadata in PARAGRAPHS:
            cur.execute("INSERT INTO documents (id, title, content, metadata) VALUES (%s, %s, %s, %s)",
                        (doc_id, title, content, Json(metadata)))
        # An exact duplicate under another id: the build must drop it.
        cur.execute("INSERT INTO documents (id, title, content, metadata) VALUES (%s, %s, %s, %s)",
                    ("sgb5-1-copy", PARAGRAPHS[0][1], PARAGRAPHS[0][2], Json({"law": "SGB V"})))
    conn.close()


def test_build_a_dataset_then_train_on_it(stack, settings_overrides):
    _load_documents(settings_overrides["database_url"])
    admin = stack.login()
    requests.post(f"{stack.url}/api/users", headers=admin, timeout=10,
                  json={"username": "ana", "password": "ana-password-long", "role": "analyst"})
    analyst = stack.login("ana", "ana-password-long")
    spec = {"name": "sgb-v", "description": "Krankenversicherung",
            "sources": [{"type": "postgres", "query": "Krankenversicherung", "metadata": {"law": "SGB V"}},
                        {"type": "postgres", "metadata": {"law": "SGB V"}}],
            "quality": {"min_chars": 50, "languages": ["de"], "dedup": "near", "redact_pii": True},
            "format": {"kind": "text", "mapping": {"text": "{title}\n\n{content}"}},
            "split": {"validation_fraction": 0.0, "seed": 1},
            "export_formats": ["jsonl", "parquet", "csv"]}
    response = requests.post(f"{stack.url}/api/datasets", headers=analyst, json=spec, timeout=60)
    assert response.status_code == 202, response.text
    dataset_id = response.json()["id"]
    dataset = stack.wait_for(f"/api/datasets/{dataset_id}", analyst, lambda d: d["is_terminal"])
    assert dataset["status"] == "completed", dataset
    manifest = dataset["manifest"]
    # sgb5-1 (twice: by query and by filter), sgb5-2, sgb5-3 read by the first source; all four again by the second.
    assert manifest["counts"]["written"] == 3, manifest["counts"]
    assert manifest["removed"]["exact_duplicates"] >= 1
    assert manifest["redactions"]["email"] == 1
    assert manifest["records"] == {"train": 3, "validation": 0}

    preview = requests.get(f"{stack.url}/api/datasets/{dataset_id}/preview?limit=5", headers=analyst, timeout=10)
    texts = [record["text"] for record in preview.json()["data"]]
    assert len(texts) == 3 and all(text.startswith("§") for text in texts)
    assert not any("info@kasse.example.de" in text for text in texts)
    parquet = requests.get(f"{stack.url}/api/datasets/{dataset_id}/files/parquet", headers=analyst, timeout=10)
    assert parquet.status_code == 200
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 3
    jsonl = requests.get(f"{stack.url}/api/datasets/{dataset_id}/files/jsonl", headers=analyst, timeout=10)
    assert [json.loads(line)["text"] for line in jsonl.text.splitlines()] == texts

    job = requests.post(f"{stack.url}/api/training/jobs", headers=admin, timeout=30, json={
        "job_name": "on-a-dataset", "base_model": "tiny-llama", "dataset_id": dataset_id,
        "hyperparameters": {"max_steps": 5, "batch_size": 2, "max_seq_length": 64}})
    assert job.status_code == 202, job.text
    trained = stack.wait_for_job(admin, job.json()["id"], lambda j: j["is_terminal"])
    assert trained["status"] == "completed", trained
    assert trained["dataset_id"] == dataset_id
    _assert_worker_counted_both_jobs(stack, trained)

    # The dataset is in use only while the job runs; now it may go.
    assert requests.delete(f"{stack.url}/api/datasets/{dataset_id}", headers=analyst, timeout=10).status_code == 204
    assert requests.get(f"{stack.url}/api/datasets/{dataset_id}", headers=analyst, timeout=10).status_code == 404


def _assert_worker_counted_both_jobs(stack, trained: dict) -> None:
    """The worker's own /metrics counted the build and the training, from its main process and its pool child."""
    # The task ends in the pool child a moment after the job row says so.
    metrics = stack.worker_metrics(lambda m: m.value("clara_worker_tasks_finished_total", task="clara.train_job") >= 1)
    for task, kind in (("clara.build_dataset", "dataset"), ("clara.train_job", "training")):
        assert metrics.value("clara_worker_tasks_received_total", task=task) == 1, metrics.text
        assert metrics.value("clara_worker_tasks_finished_total", task=task, outcome="succeeded") == 1
        assert metrics.value("clara_worker_tasks_finished_total", task=task) == 1
        assert metrics.value("clara_worker_task_duration_seconds_count", task=task) == 1
        assert metrics.value("clara_worker_jobs_total", kind=kind, outcome="completed") == 1
        assert metrics.value("clara_worker_running_tasks", task=task) == 0
    assert metrics.value("clara_worker_training_steps_total") == 5
    assert metrics.value("clara_worker_trained_tokens_total") == trained["metrics"]["trained_tokens"] > 0
    assert metrics.value("clara_worker_training_tokens_per_second", gpu="7") == 0
    assert metrics.value("clara_worker_dataset_documents_read_total") >= len(PARAGRAPHS)
    assert metrics.value("clara_worker_dataset_records_written_total") == 3
    assert not metrics.matching("clara_worker_running_task_info")
    (info,) = metrics.matching("clara_worker_info")
    assert info.labels["queues"] == "cpu,gpu" and info.labels["gpu_ids"] == "7" and info.labels["concurrency"] == "1"
    # The main process and its one pool child, each with its own resident memory.
    memory = metrics.matching("clara_worker_process_resident_memory_bytes")
    assert len({sample.labels["pid"] for sample in memory}) == 2 and all(s.value > 0 for s in memory)
