"""Every path a request influences stays inside its directory, symlinks included."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

GOOD_JSONL = "".join(json.dumps({"text": f"Record {i} about registering an address."}) + "\n" for i in range(6))
JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl"}


def _submit(client, headers, **changes):
    return client.post("/api/training/jobs", headers=headers, json={**JOB, **changes})


def test_dataset_path_through_a_symlinked_directory_is_refused(client, trainer, storage, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(GOOD_JSONL)
    (storage["data"] / "team").symlink_to(outside, target_is_directory=True)
    response = _submit(client, trainer, dataset_path="team/secret.jsonl")
    assert response.status_code == 422
    assert "outside" in response.get_json()["error"]["details"]["fields"]["dataset_path"][0]


def test_symlink_inside_the_data_directory_is_followed(client, trainer, storage):
    (storage["data"] / "alias.jsonl").symlink_to(storage["data"] / "demo-train.jsonl")
    assert _submit(client, trainer, dataset_path="alias.jsonl").status_code == 202


def test_base_model_symlinked_out_of_the_models_directory_is_refused(client, trainer, storage, tmp_path):
    outside = tmp_path / "foreign-model"
    shutil.copytree(storage["models"] / "tiny-llama", outside)
    (storage["models"] / "linked-model").symlink_to(outside, target_is_directory=True)
    response = _submit(client, trainer, base_model="linked-model")
    assert response.status_code == 422
    assert "base_model" in response.get_json()["error"]["details"]["fields"]


@pytest.mark.parametrize("base_model", ["../models/tiny-llama", "/etc", "tiny-llama/../../data"])
def test_base_model_escapes_are_refused(client, trainer, base_model):
    assert _submit(client, trainer, base_model=base_model).status_code == 422


def test_adapter_download_never_follows_symlinks(client, trainer, db, storage, tmp_path):
    job = _submit(client, trainer).get_json()
    adapter = storage["outputs"] / job["id"]
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "key.pem").write_text("PRIVATE KEY")
    (adapter / "leak.pem").symlink_to(secret_dir / "key.pem")
    (adapter / "leakdir").symlink_to(secret_dir, target_is_directory=True)
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'completed', adapter_path = %s WHERE id = %s",
                    (str(adapter), job["id"]))
    response = client.get(f"/api/training/jobs/{job['id']}/adapter", headers=trainer)
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.data), mode="r:gz") as archive:
        members = archive.getmembers()
        names = {member.name for member in members}
        assert names == {f"{job['id']}/adapter_config.json"}
        assert not any(member.issym() or member.islnk() for member in members)
        assert all(b"PRIVATE KEY" not in archive.extractfile(m).read() for m in members if m.isfile())


def test_adapter_directory_that_is_a_symlink_out_of_outputs_is_404(client, trainer, db, storage, tmp_path):
    job = _submit(client, trainer).get_json()
    elsewhere = tmp_path / "elsewhere-adapter"
    elsewhere.mkdir()
    (elsewhere / "adapter_config.json").write_text("{}")
    (storage["outputs"] / job["id"]).symlink_to(elsewhere, target_is_directory=True)
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'completed', adapter_path = %s WHERE id = %s",
                    (str(storage["outputs"] / job["id"]), job["id"]))
    response = client.get(f"/api/training/jobs/{job['id']}/adapter", headers=trainer)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "adapter_missing"


@pytest.fixture
def uploaded(app, client, analyst) -> dict:
    from tests.integration.dataset_jobs import finish_upload

    data = {"file": (io.BytesIO(GOOD_JSONL.encode()), "faq.jsonl"), "name": "faq"}
    response = client.post("/api/datasets/upload", headers=analyst, data=data, content_type="multipart/form-data")
    # A CPU worker stores the upload; here the test process plays it.
    return finish_upload(app, client, analyst, response)


def _manifest_path(db, dataset_id: str, path: str) -> None:
    """Point the manifest's jsonl train file at another path, as a tampered manifest would."""
    with db.transaction() as cur:
        cur.execute("UPDATE dataset_jobs SET manifest = jsonb_set(manifest, '{files,jsonl,train,path}', %s::jsonb)"
                    " WHERE id = %s", (json.dumps(path), dataset_id))


def test_dataset_file_download_stays_inside_the_dataset(client, analyst, db, storage, uploaded, tmp_path):
    assert client.get(f"/api/datasets/{uploaded['id']}/files/jsonl", headers=analyst).status_code == 200
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"text": "not yours"}\n')
    for path in ("../../secret.jsonl", str(secret), "train-link.jsonl"):
        if path == "train-link.jsonl":
            (storage["datasets"] / uploaded["id"] / path).symlink_to(secret)
        _manifest_path(db, uploaded["id"], path)
        response = client.get(f"/api/datasets/{uploaded['id']}/files/jsonl", headers=analyst)
        assert response.status_code == 404, path
        assert b"not yours" not in response.data


def test_dataset_directory_symlinked_out_of_the_datasets_directory_is_404(client, analyst, db, storage, uploaded,
                                                                          tmp_path):
    moved = tmp_path / "moved"
    shutil.move(storage["datasets"] / uploaded["id"], moved)
    (storage["datasets"] / uploaded["id"]).symlink_to(moved, target_is_directory=True)
    for path in ("files/jsonl", "preview"):
        response = client.get(f"/api/datasets/{uploaded['id']}/{path}", headers=analyst)
        assert response.status_code == 404, path
