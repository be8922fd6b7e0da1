"""The `clara` CLI against the real API served on a loopback port: sessions, jobs, datasets, users."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask_jwt_extended import create_access_token
from werkzeug.serving import make_server

from auth.users import create_user
from cli.main import cli
from tests.integration.conftest import PASSWORD
from tests.integration.dataset_jobs import dataset_worker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
UPLOAD_JSONL = "".join(json.dumps({"text": f"Satz {i}: Die Anmeldung erfolgt im Bürgerbüro."}) + "\n"
                       for i in range(5))

Run = Callable[..., Result]


@pytest.fixture
def api_url(app: Flask) -> Iterator[str]:
    """The app served by Werkzeug on a free loopback port, as a remote deployment would be."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def run(api_url: str, tmp_path: Path, config_home: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Invoke `clara` with CLARA_URL and a private HOME and config directory."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    env = {"CLARA_URL": api_url, "XDG_CONFIG_HOME": str(config_home), "HOME": str(tmp_path / "home")}

    def _run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, env=env)

    return _run


@pytest.fixture
def admin_cli(db, run: Run) -> Run:
    """`clara` logged in as an admin."""
    create_user(db, "admin-user", PASSWORD, "admin")
    result = run("login", "--username", "admin-user", "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    return run


def _stored(config_home: Path, api_url: str) -> dict:
    return json.loads((config_home / "clara" / "tokens.json").read_text())[api_url]


def _fails_cleanly(result: Result, exit_code: int = 1) -> None:
    """An error is one line on stderr with the exit status, never a traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")


def test_login_reads_the_password_from_stdin_and_stores_tokens_0600(admin_cli, config_home, api_url):
    token_file = config_home / "clara" / "tokens.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    entry = _stored(config_home, api_url)
    assert entry["username"] == "admin-user" and entry["access_token"] and entry["refresh_token"]
    result = admin_cli("whoami")
    assert result.exit_code == 0 and "admin-user" in result.output and "admin" in result.output
    me = json.loads(admin_cli("whoami", "--json").output)
    assert me["username"] == "admin-user" and me["role"] == "admin"


def test_wrong_password_prints_the_api_message(db, run):
    create_user(db, "admin-user", PASSWORD, "admin")
    result = run("login", "-u", "admin-user", "--password-stdin", input="not-the-password\n")
    _fails_cleanly(result)
    assert "Wrong username or password." in result.stderr


def test_commands_without_login_say_so(run, api_url):
    result = run("jobs", "list")
    _fails_cleanly(result)
    assert f"Not logged in to {api_url}" in result.stderr


def test_unreachable_api_is_one_line_with_its_own_exit_status(run):
    result = run("--url", "http://127.0.0.1:1", "login", "-u", "admin", "--password-stdin", input="x\n")
    _fails_cleanly(result, exit_code=3)
    assert result.stderr.startswith("Error: Cannot reach the Clara API at http://127.0.0.1:1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_expired_access_token_is_refreshed_once_and_stored(app, admin_cli, config_home, api_url):
    before = _stored(config_home, api_url)
    with app.app_context():
        expired = create_access_token("1", expires_delta=timedelta(seconds=-60),
                                      additional_claims={"role": "admin", "username": "admin-user", "sid": "x"})
    tokens = json.loads((config_home / "clara" / "tokens.json").read_text())
    tokens[api_url]["access_token"] = expired
    (config_home / "clara" / "tokens.json").write_text(json.dumps(tokens))
    result = admin_cli("whoami", "--json")
    assert result.exit_code == 0, result.output
    after = _stored(config_home, api_url)
    assert after["access_token"] not in (expired, before["access_token"])
    assert after["refresh_token"] != before["refresh_token"]


def test_token_past_its_expiry_time_is_refreshed_before_the_request(admin_cli, config_home, api_url):
    path = config_home / "clara" / "tokens.json"
    tokens = json.loads(path.read_text())
    old_refresh = tokens[api_url]["refresh_token"]
    tokens[api_url]["expires_at"] = 0
    path.write_text(json.dumps(tokens))
    assert admin_cli("whoami").exit_code == 0
    assert _stored(config_home, api_url)["refresh_token"] != old_refresh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_logout_revokes_the_tokens_and_forgets_them(admin_cli, config_home, api_url):
    token = _stored(config_home, api_url)["access_token"]
    result = admin_cli("logout")
    assert result.exit_code == 0 and "Logged out" in result.output
    assert api_url not in json.loads((config_home / "clara" / "tokens.json").read_text())
    import requests

    assert requests.get(f"{api_url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert "Not logged in" in admin_cli("logout").output


def test_revoked_session_asks_to_log_in_again(admin_cli, config_home, api_url):
    entry = _stored(config_home, api_url)
    import requests

    requests.post(f"{api_url}/api/auth/logout", headers={"Authorization": f"Bearer {entry['access_token']}"})
    path = config_home / "clara" / "tokens.json"
    tokens = json.loads(path.read_text())
    tokens[api_url]["expires_at"] = 0
    path.write_text(json.dumps(tokens))
    result = admin_cli("whoami")
    _fails_cleanly(result)
    assert "clara login" in result.stderr


def _submit(run: Run, *extra: str) -> str:
    result = run("jobs", "submit", str(CONFIGS / "lora-tiny.yaml"), "--json", *extra)
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "queued"
    return job["id"]


def test_preset_submits_and_the_job_can_be_listed_shown_and_cancelled(admin_cli):
    job_id = _submit(admin_cli)
    listing = json.loads(admin_cli("jobs", "list", "--json").stdout)
    assert [job["id"] for job in listing["data"]] == [job_id]
    assert listing["data"][0]["hyperparameters"]["max_steps"] == 60
    table = admin_cli("jobs", "list")
    assert table.exit_code == 0 and job_id in table.output and "tiny-lora-smoke" in table.output
    shown = admin_cli("jobs", "show", job_id)
    assert shown.exit_code == 0 and "queued" in shown.output and "tiny-llama" in shown.output
    cancelled = admin_cli("jobs", "cancel", job_id)
    assert cancelled.exit_code == 0 and f"Cancelled job {job_id}." in cancelled.output
    assert json.loads(admin_cli("jobs", "show", job_id, "--json").stdout)["status"] == "cancelled"
    again = admin_cli("jobs", "cancel", job_id)
    _fails_cleanly(again)
    assert "already ended" in again.stderr


def test_delete_adapter_frees_a_completed_jobs_adapter(admin_cli, db, storage):
    job_id = _submit(admin_cli)
    refused = admin_cli("jobs", "delete-adapter", job_id)
    _fails_cleanly(refused)
    assert "no adapter to delete" in refused.stderr
    adapter = storage["outputs"] / job_id
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'completed', adapter_path = %s WHERE id = %s",
                    (str(adapter), job_id))
    deleted = admin_cli("jobs", "delete-adapter", job_id)
    assert deleted.exit_code == 0 and f"Deleted the adapter of job {job_id}." in deleted.output
    assert not adapter.exists()


def test_events_are_listed_in_order(admin_cli):
    job_id = _submit(admin_cli)
    admin_cli("jobs", "cancel", job_id)
    events = json.loads(admin_cli("jobs", "events", job_id, "--json").stdout)["data"]
    assert len(events) >= 2 and [e["id"] for e in events] == sorted(e["id"] for e in events)
    table = admin_cli("jobs", "events", job_id)
    assert table.exit_code == 0 and events[-1]["message"] in table.output
    later = json.loads(admin_cli("jobs", "events", job_id, "--after", str(events[0]["id"]), "--json").stdout)
    assert [e["id"] for e in later["data"]] == [e["id"] for e in events[1:]]


def test_watch_exits_non_zero_when_the_job_did_not_complete(admin_cli):
    job_id = _submit(admin_cli)
    admin_cli("jobs", "cancel", job_id)
    result = admin_cli("jobs", "watch", job_id)
    _fails_cleanly(result)
    assert "(cancelled)" in result.stdout and f"Job {job_id} ended cancelled." in result.stderr


def test_watch_polls_when_the_api_has_no_stream_free(app, admin_cli):
    slots = app.extensions["clara_stream_slots"] = threading.BoundedSemaphore(1)
    assert slots.acquire(blocking=False)
    job_id = _submit(admin_cli)
    # The job ends while watch polls: queued with no worker, then cancelled.
    canceller = threading.Timer(1.5, lambda: admin_cli("jobs", "cancel", job_id))
    canceller.start()
    try:
        result = admin_cli("jobs", "watch", job_id)
    finally:
        canceller.join()
    _fails_cleanly(result)
    assert f"Job {job_id} ended cancelled." in result.stderr


def test_bad_field_prints_the_api_message_without_a_traceback(admin_cli):
    result = admin_cli("jobs", "submit", str(CONFIGS / "lora-tiny.yaml"), "--set", "hyperparameters.lora_rank=0")
    _fails_cleanly(result)
    assert "Invalid request. hyperparameters.lora_rank" in result.stderr
    assert json.loads(admin_cli("jobs", "list", "--json").stdout)["data"] == []


def test_adapter_of_a_queued_job_is_not_ready(admin_cli):
    job_id = _submit(admin_cli)
    result = admin_cli("jobs", "download", job_id)
    _fails_cleanly(result)
    assert "has no adapter" in result.stderr
    assert not Path(f"adapter-{job_id}.tar.gz").exists()


def test_unknown_job_is_the_api_404(admin_cli):
    result = admin_cli("jobs", "show", "00000000-0000-0000-0000-000000000000")
    _fails_cleanly(result)
    assert "No training job 00000000-0000-0000-0000-000000000000." in result.stderr


def test_datasets_upload_list_show_preview_and_download(admin_cli, tmp_path, app):
    assert admin_cli("datasets", "list").output.strip() == "No datasets."
    source = tmp_path / "faq.jsonl"
    source.write_text(UPLOAD_JSONL, encoding="utf-8")
    with dataset_worker(app):
        uploaded = admin_cli("datasets", "upload", str(source), "--name", "faq", "--wait", "--json")
    assert uploaded.exit_code == 0, uploaded.output
    dataset_id = json.loads(uploaded.stdout)["id"]
    listing = json.loads(admin_cli("datasets", "list", "--json").stdout)
    assert [d["id"] for d in listing["data"]] == [dataset_id]
    assert "5/0" in admin_cli("datasets", "list").output
    assert "completed" in admin_cli("datasets", "show", dataset_id).output
    preview = admin_cli("datasets", "preview", dataset_id, "--limit", "2")
    assert [json.loads(line)["text"] for line in preview.stdout.splitlines()] == [
        "Satz 0: Die Anmeldung erfolgt im Bürgerbüro.", "Satz 1: Die Anmeldung erfolgt im Bürgerbüro."]
    downloaded = admin_cli("datasets", "download", dataset_id, "--format", "parquet", "-o", str(tmp_path))
    assert downloaded.exit_code == 0, downloaded.output
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / f"dataset-{dataset_id}-train.parquet").num_rows == 5


def test_bad_upload_names_the_line(admin_cli, tmp_path, app):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "fine"}\n{"nothing": 1}\n', encoding="utf-8")
    queued = admin_cli("datasets", "upload", str(source))
    assert queued.exit_code == 0 and "queued" in queued.output, queued.output
    with dataset_worker(app):
        result = admin_cli("datasets", "upload", str(source), "--wait")
    _fails_cleanly(result)
    assert "bad records" in result.stderr and "2" in result.stderr


def test_admin_creates_lists_and_disables_users(admin_cli, run):
    created = admin_cli("users", "create", "m.weber", "--role", "trainer", "--password-stdin",
                        input="a-long-password-1\n")
    assert created.exit_code == 0 and "Created user m.weber" in created.output
    listing = json.loads(admin_cli("users", "list", "--json").stdout)
    assert [u["username"] for u in listing["data"]] == ["admin-user", "m.weber"]
    assert "m.weber" in admin_cli("users", "list").output
    disabled = admin_cli("users", "disable", "m.weber")
    assert disabled.exit_code == 0, disabled.output
    assert [u["disabled"] for u in json.loads(admin_cli("users", "list", "--json").stdout)["data"]] == [False, True]
    login = run("login", "-u", "m.weber", "--password-stdin", input="a-long-password-1\n")
    _fails_cleanly(login)
    itself = admin_cli("users", "disable", "admin-user")
    _fails_cleanly(itself)
    assert "You cannot disable your own account." in itself.stderr


def test_duplicate_user_and_short_password_are_api_errors(admin_cli):
    short = admin_cli("users", "create", "tina", "--role", "analyst", "--password-stdin", input="short\n")
    _fails_cleanly(short)
    assert "password" in short.stderr
    admin_cli("users", "create", "tina", "--role", "analyst", "--password-stdin", input="a-long-password-1\n")
    again = admin_cli("users", "create", "tina", "--role", "analyst", "--password-stdin", input="a-long-password-1\n")
    _fails_cleanly(again)
    assert "is taken" in again.stderr


def test_non_admin_gets_the_forbidden_message(db, run):
    create_user(db, "tom", PASSWORD, "trainer")
    assert run("login", "-u", "tom", "--password-stdin", input=PASSWORD + "\n").exit_code == 0
    result = run("users", "list")
    _fails_cleanly(result)
    assert "needs one of the roles: admin" in result.stderr
