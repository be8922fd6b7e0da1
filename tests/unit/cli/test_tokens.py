"""Token storage: mode 0600 whatever the umask, one session per URL, atomic writes."""

from __future__ import annotations

import json
import os
import stat
import time

from cli.tokens import TokenStore, config_dir

PAIR = {"access_token": "a1", "refresh_token": "r1", "token_type": "Bearer", "expires_in": 900}


def test_config_dir_follows_xdg_config_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "clara"


def test_tokens_file_is_0600_even_with_a_permissive_umask(tmp_path):
    store = TokenStore(tmp_path / "clara" / "tokens.json")
    old = os.umask(0)
    try:
        store.save("http://api:45680/", PAIR, username="ada")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in store.path.parent.iterdir()] == ["tokens.json"]


def test_sessions_are_kept_per_url_and_refresh_keeps_the_username(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    store.save("http://one", PAIR, username="ada")
    store.save("http://two/", {**PAIR, "access_token": "b1"}, username="bob")
    store.save("http://one/", {**PAIR, "access_token": "a2", "refresh_token": "r2"})
    one = store.get("http://one")
    assert one["access_token"] == "a2" and one["refresh_token"] == "r2" and one["username"] == "ada"
    assert abs(one["expires_at"] - (time.time() + 900)) < 5
    assert store.get("http://two")["username"] == "bob"
    assert store.delete("http://one") is True and store.get("http://one") is None
    assert store.delete("http://one") is False
    assert set(json.loads(store.path.read_text())) == {"http://two"}


def test_a_damaged_file_means_not_logged_in(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    assert TokenStore(path).get("http://one") is None
