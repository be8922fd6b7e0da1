"""Per-user limits on stored bytes and on concurrent adapter downloads."""

from __future__ import annotations

import logging
import time
import uuid

import redis

from api.errors import ApiError
from api.openapi_examples import error_example
from records.db import Database
from records.storage import usage_bytes
from settings import Settings

logger = logging.getLogger(__name__)

STORAGE_SETTING = "storage_quota_bytes_per_user"
STORAGE_QUOTA_EXAMPLE = error_example(
    "quota_exceeded", "Quota exceeded: your datasets and adapters take 214748364800 bytes, and "
                      "storage_quota_bytes_per_user allows 214748364800 per user; delete a dataset or an adapter "
                      "first.",
    quota=STORAGE_SETTING, limit=214748364800, used=214748364800)


def require_storage(db: Database, settings: Settings, user_id: int) -> None:
    """Raise a 409 quota_exceeded when the user's stored bytes are at or over their storage quota."""
    limit = settings.storage_quota_bytes_per_user
    used = usage_bytes(db, user_id)
    if used >= limit:
        logger.info("User %s is at their storage quota (%s of %s bytes).", user_id, used, limit)
        raise ApiError(409, f"Quota exceeded: your datasets and adapters take {used} bytes, and {STORAGE_SETTING} "
                            f"allows {limit} per user; delete a dataset or an adapter first.",
                       "quota_exceeded", {"quota": STORAGE_SETTING, "limit": limit, "used": used})


# Each download holds a member of a per-user sorted set in Redis, scored by when it last sent data, so that
# every API host sees the same count. A member not refreshed for SLOT_SECONDS (its host died mid-download)
# stops counting; the key's own expiry removes a set nobody touches any more.
SLOT_SECONDS = 300
SLOT_REFRESH_SECONDS = 60
DOWNLOAD_RETRY_SECONDS = 10
TOO_MANY_DOWNLOADS_EXAMPLE = error_example(
    "too_many_downloads", "You already have 2 adapter downloads in progress, and max_downloads_per_user allows 2 "
                          "at once; retry when one has finished.", limit=2)
_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
_REFRESH = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], tonumber(redis.call('TIME')[1]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


class DownloadSlot:
    """One of a user's max_downloads_per_user concurrent downloads, held until released."""

    def __init__(self, client: redis.Redis, user_id: int) -> None:
        self.client = client
        self.key = f"clara:downloads:{user_id}"
        self.token = uuid.uuid4().hex
        self._refreshed = time.monotonic()
        self._released = False

    def refresh(self) -> None:
        """Note that the download is still sending, at most once a SLOT_REFRESH_SECONDS."""
        now = time.monotonic()
        if self._released or now - self._refreshed < SLOT_REFRESH_SECONDS:
            return
        self._refreshed = now
        try:
            self.client.eval(_REFRESH, 1, self.key, self.token, SLOT_SECONDS)
        except redis.RedisError as exc:
            logger.warning("Could not refresh a download slot of %s: %s", self.key, exc)

    def release(self) -> None:
        """Free the slot; idempotent, and a Redis failure only leaves it to expire."""
        if self._released:
            return
        self._released = True
        try:
            self.client.zrem(self.key, self.token)
        except redis.RedisError as exc:
            logger.warning("Could not release a download slot of %s; it expires in %s seconds: %s",
                           self.key, SLOT_SECONDS, exc)


def acquire_download(client: redis.Redis, settings: Settings, user_id: int) -> DownloadSlot:
    """Take one of the user's download slots, or raise a 429 too_many_downloads with Retry-After."""
    slot = DownloadSlot(client, user_id)
    limit = settings.max_downloads_per_user
    if not client.eval(_ACQUIRE, 1, slot.key, slot.token, SLOT_SECONDS, limit):
        raise ApiError(429, f"You already have {limit} adapter downloads in progress, and max_downloads_per_user "
                            f"allows {limit} at once; retry when one has finished.",
                       "too_many_downloads", {"limit": limit},
                       headers={"Retry-After": str(DOWNLOAD_RETRY_SECONDS)})
    return slot
