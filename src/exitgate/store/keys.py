"""Secrets: package keys, the admin token, record ids.

A package key is the proxy password (`Proxy-Authorization: Basic`, RFC 1929), so it must be
safe in both: `secrets.token_urlsafe` yields `[A-Za-z0-9_-]` only, never `:`.

Only a hash of a package key is stored. The hash is a plain SHA-256, unsalted and fast, on
purpose: salts and slow KDFs exist to protect low-entropy human passwords from dictionary
attacks, but a key here is 192 random bits, so no dictionary exists and brute force over the
key space is hopeless at any hash speed. A fast, deterministic hash is what lets the proxy find
a package by key with one dict lookup per request instead of a KDF run per package.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_BYTES = 24  # 192 bits → 32 characters
ADMIN_TOKEN_BYTES = 32
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 (a file name, not a secret)


def new_key() -> str:
    """A fresh package key: 32 URL-safe characters, no `:`."""
    return secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256, lowercase hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(key: str, key_hash: str) -> bool:
    """Does `key` hash to `key_hash`? Constant time in the compared hashes."""
    return hmac.compare_digest(hash_key(key), key_hash)


def new_id(prefix: str) -> str:
    """A short random record id such as `pkg_3kq9x2mf7t`: 50 random bits, base32 lowercase."""
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford: no i, l, o, u to misread
    return prefix + "_" + "".join(secrets.choice(alphabet) for _ in range(10))


def new_admin_token() -> str:
    """A fresh admin API bearer token."""
    return secrets.token_urlsafe(ADMIN_TOKEN_BYTES)


def admin_token_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / ADMIN_TOKEN_FILE


def read_admin_token(data_dir: str | Path) -> str | None:
    """The token stored in `data_dir`, or None when there is no (non-empty) token file."""
    try:
        text = admin_token_path(data_dir).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def load_or_create_admin_token(data_dir: str | Path) -> tuple[str, bool]:
    """(token, created): reuse the token file in `data_dir`, or write a new one with mode 0600.

    `created` tells the caller to print the token once; a restart reuses it silently.
    """
    existing = read_admin_token(data_dir)
    if existing is not None:
        return existing, False
    path = admin_token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # an empty file left by a crash or by hand
    token = new_admin_token()
    # O_EXCL + mode at creation: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token, True
