"""Token storage for the CLI: one file in the user's config directory, readable by the user only."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    """The user's Clara config directory: platformdirs' when installed, else $XDG_CONFIG_HOME/clara."""
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "clara"
    return Path(platformdirs.user_config_dir("clara"))


def normalise_url(url: str) -> str:
    """One key per deployment, whatever trailing slash the user typed."""
    return url.strip().rstrip("/")


class TokenStore:
    """Token pairs per API URL in `tokens.json`, written atomically with mode 0600."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "tokens.json"

    def _read_all(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A damaged file only means logging in again; never a traceback.
            return {}
        return data if isinstance(data, dict) else {}

    def _write_all(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        # Created with 0600 from the start, so the tokens are never readable by others, not even briefly.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def get(self, url: str) -> dict[str, Any] | None:
        """The stored session for an API URL, or None."""
        return self._read_all().get(normalise_url(url))

    def save(self, url: str, tokens: dict[str, Any], username: str | None = None) -> dict[str, Any]:
        """Store a token pair as the API answered it; keep the username of an earlier login."""
        data = self._read_all()
        key = normalise_url(url)
        previous = data.get(key) or {}
        entry = {
            "access_token": tokens["access_token"],
            "refresh_token": tokens.get("refresh_token") or previous.get("refresh_token"),
            "expires_at": time.time() + float(tokens.get("expires_in") or 0),
            "username": username or previous.get("username"),
        }
        data[key] = entry
        self._write_all(data)
        return entry

    def delete(self, url: str) -> bool:
        """Forget the session for an API URL; True if there was one."""
        data = self._read_all()
        if data.pop(normalise_url(url), None) is None:
            return False
        self._write_all(data)
        return True
