"""Failed-login counters in Redis: per username and per client address, each over a fixed window."""

from __future__ import annotations

import hashlib
import logging

import redis

from settings import Settings

logger = logging.getLogger(__name__)

_USER_KEY = "clara:login-failures:user:"
_ADDRESS_KEY = "clara:login-failures:address:"


def _user_key(username: str) -> str:
    # Hashed so that whatever was typed as a username never becomes a Redis key in clear.
    return _USER_KEY + hashlib.sha256(username.strip().lower().encode()).hexdigest()


def _address_key(address: str) -> str:
    return _ADDRESS_KEY + address


def retry_after(store: redis.Redis, settings: Settings, username: str, address: str) -> int | None:
    """Seconds until a login may be tried again for this username from this address, or None when allowed now."""
    user_key, address_key = _user_key(username), _address_key(address)
    with store.pipeline(transaction=False) as pipe:
        pipe.get(user_key).ttl(user_key).get(address_key).ttl(address_key)
        user_count, user_ttl, address_count, address_ttl = pipe.execute()
    waits = []
    for count, ttl, limit in ((user_count, user_ttl, settings.login_max_failures_per_user),
                              (address_count, address_ttl, settings.login_max_failures_per_address)):
        if count is not None and int(count) >= limit:
            # A key that lost its expiry would lock out for ever; a full window is the most anyone waits.
            waits.append(ttl if ttl > 0 else settings.login_failure_window_seconds)
    return max(waits) if waits else None


def record_failure(store: redis.Redis, settings: Settings, username: str, address: str) -> None:
    """Count one failed login against the username and the address; the window starts at the first failure."""
    window = settings.login_failure_window_seconds
    with store.pipeline(transaction=True) as pipe:
        for key in (_user_key(username), _address_key(address)):
            pipe.set(key, 0, ex=window, nx=True).incr(key)
        pipe.execute()


def clear_user(store: redis.Redis, username: str) -> None:
    """Forget a username's failures after it logged in."""
    # The address counter stays: one good login must not wipe out the failures others caused from there.
    store.delete(_user_key(username))
