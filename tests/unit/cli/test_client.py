"""The CLI's HTTP client against a stand-in API: refresh on expiry, errors as one line, downloads, watch."""

from __future__ import annotations

import json
import stat

import pytest

from cli.client import ApiError, Client, Unreachable
from cli.tokens import TokenStore


def _fails_cleanly(result, exit_code=1):
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output and result.stderr.startswith("Error: ")


def test_token_expired_is_refreshed_once_and_the_request_retried(stub, stub_url, token_file, run_stub):
    stub.valid_tokens = {"access-2"}  # The server already considers access-1 expired.
    result = run_stub("whoami", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["username"] == "ada"
    assert stub.refreshes == 1
    assert [r[2] for r in stub.requests if r[1] == "/api/auth/me"] == ["Bearer access-1", "Bearer access-2"]
    stored = json.loads(token_file.read_text())[stub_url]
    assert stored["access_token"] == "access-2" and stored["refresh_token"] == "refresh-2"
    assert stored["username"] == "ada" and stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_a_failed_refresh_asks_to_log_in_again(stub, token_file, run_stub):
    stub.valid_tokens = set()
    token_file.write_text(token_file.read_text().replace("refresh-1", "refresh-revoked"))
    result = run_stub("whoami")
    _fails_cleanly(result)
    assert "The token has been revoked; log in again. Run `clara login` again." in result.stderr


def test_a_non_clara_error_body_is_summarised(stub_url, token_file):
    client = Client(stub_url, TokenStore(token_file))
    with pytest.raises(ApiError) as caught:
        client.get("/api/proxy-trouble")
    assert caught.value.status == 502 and caught.value.code == "http_error"
    assert caught.value.message == (f"HTTP 502 from {stub_url}/api/proxy-trouble: "
                                    "<html><body><h1>502 Bad Gateway</h1></body></html>")


def test_connection_refused_is_unreachable(tmp_path):
    client = Client("http://127.0.0.1:1", TokenStore(tmp_path / "tokens.json"))
    with pytest.raises(Unreachable) as caught:
        client.request("GET", "/health", auth=False)
    assert caught.value.exit_code == 3
    assert caught.value.message.startswith("Cannot reach the Clara API at http://127.0.0.1:1: ")
    assert "\n" not in caught.value.message


def test_watch_draws_progress_and_exits_0_when_completed(stub, run_stub, make_job):
    stub.job_snapshots = [make_job("queued", 0), make_job("running", 4, 3.2), make_job("completed", 10, 1.5)]
    result = run_stub("jobs", "watch", "11111111-2222-3333-4444-555555555555", "--interval", "0.2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "(queued)" in lines[0] and "step 4/10" in lines[1] and "loss 3.2000" in lines[1]
    assert lines[-1].startswith("Job 11111111-2222-3333-4444-555555555555 completed")


def test_watch_of_a_failed_job_exits_1_with_the_reason(stub, run_stub, make_job):
    stub.job_snapshots = [make_job("failed", 2, 3.0)]
    result = run_stub("jobs", "watch", "11111111-2222-3333-4444-555555555555")
    _fails_cleanly(result)
    assert "failed (out_of_memory): Lower batch_size." in result.stderr


def test_adapter_download_streams_to_the_default_name(tmp_path, run_stub):
    result = run_stub("jobs", "download", "11111111-2222-3333-4444-555555555555")
    assert result.exit_code == 0, result.output
    path = tmp_path / "adapter-11111111-2222-3333-4444-555555555555.tar.gz"
    assert path.stat().st_size == 3_000_000 and not list(tmp_path.glob("*.partial"))
    again = run_stub("jobs", "download", "11111111-2222-3333-4444-555555555555")
    _fails_cleanly(again)
    assert "--force" in again.stderr


def test_plot_on_a_server_without_the_route_says_so(tmp_path, run_stub, stub_url):
    result = run_stub("jobs", "plot", "11111111-2222-3333-4444-555555555555")
    _fails_cleanly(result)
    assert f"The Clara API at {stub_url} cannot plot losses yet" in result.stderr
    assert not list(tmp_path.glob("loss-*"))


def test_disable_on_a_server_without_the_route_says_so(run_stub, stub_url):
    result = run_stub("users", "disable", "ada")
    _fails_cleanly(result)
    assert f"The Clara API at {stub_url} cannot disable users yet" in result.stderr
    missing = run_stub("users", "disable", "nobody")
    _fails_cleanly(missing)
    assert "No user 'nobody'." in missing.stderr


def test_a_job_id_that_is_not_a_uuid_is_a_usage_error(run_stub, stub):
    result = run_stub("jobs", "show", "not-a-uuid")
    assert result.exit_code == 2 and "not a valid UUID" in result.output
    assert stub.requests == []
