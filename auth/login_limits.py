"""Failed-login counters in Redis: per username and per client address, each over a fixed window.

The rule: a username whose own counter reached login_max_failures_per_user is refused from everywhere. An
address whose counter reached login_max_failures_per_address is not locked out as a whole, since behind a
reverse proxy (or a NAT) it is every client's address: from there, only usernames that failed at least once
in their own window are refused. A username with a clean counter may still log in, and the right password
succeeds; a guesser spraying many usernames from that address gets one wrong guess per username per window
instead of login_max_failures_per_user.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import redis

from settings import Settings

logger = logging.getLogger(__name__)

_USER_KEY = "clara:login-failures:user:"
_ADDRESS_KEY = "clara:login-failures:address:"


def _normalised(username: str) -> bytes:
    return username.strip().lower().encode()


def _user_key(username: str) -> str:
    # Hashed so that whatever was typed as a username never becomes a Redis key in clear.
    return _USER_KEY + hashlib.sha256(_normalised(username)).hexdigest()


def _address_key(address: str) -> str:
    return _ADDRESS_KEY + address


def username_digest(settings: Settings, username: str) -> str:
    """A short, keyed digest of a typed username for logs: lines about one name match, and a password typed
    into the username field cannot be read back, nor guessed from the log without the secret key."""
    digest = hmac.new(settings.secret_key.encode(), _normalised(username), hashlib.sha256).hexdigest()
    return f"user#{digest[:12]}"


def _wait(ttl: int, settings: Settings) -> int:
    # A key that lost its expiry would lock out for ever; a full window is the most anyone waits.
    return ttl if ttl > 0 else settings.login_failure_window_seconds


def retry_after(store: redis.Redis, settings: Settings, username: str, address: str) -> int | None:
    """Seconds until a login may be tried again for this username from this address, or None when allowed now."""
    user_key, address_key = _user_key(username), _address_key(address)
    with store.pipeline(transaction=False) as pipe:
        pipe.get(user_key).ttl(user_key).get(address_key).ttl(address_key)
        user_count, user_ttl, address_count, address_ttl = pipe.execute()
    user_failures, address_failures = int(user_count or 0), int(address_count or 0)
    if user_failures >= settings.login_max_failures_per_user:
        return _wait(user_ttl, settings)
    if address_failures >= settings.login_max_failures_per_address and user_failures > 0:
        # Allowed again once either window ends: the username's failures or the address's.
        return min(_wait(user_ttl, settings), _wait(address_ttl, settings))
    return None


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
