"""Package keys, admin tokens and record ids (store/keys.py)."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
from pathlib import Path

from exitgate.store.keys import (
    ADMIN_TOKEN_FILE,
    hash_key,
    key_matches,
    load_or_create_admin_token,
    new_admin_token,
    new_id,
    new_key,
    read_admin_token,
)


def test_new_key_is_url_and_basic_auth_safe() -> None:
    keys = {new_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", key), key
        # survives a Basic header round trip as the password
        header = base64.b64encode(f"country-us:{key}".encode()).decode()
        assert base64.b64decode(header).decode().split(":", 1)[1] == key


def test_hash_is_sha256_hex_and_matches_only_its_key() -> None:
    key = new_key()
    digest = hash_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert key_matches(key, digest)
    assert not key_matches(key + "x", digest)
    assert not key_matches(new_key(), digest)
    assert not key_matches(key, "")


def test_ids_have_prefix_and_are_distinct() -> None:
    ids = {new_id("pkg") for _ in range(500)}
    assert len(ids) == 500
    assert all(re.fullmatch(r"pkg_[0-9a-z]{10}", i) for i in ids)


def test_admin_token_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert read_admin_token(data) is None
    token, created = load_or_create_admin_token(data)
    assert created
    assert len(token) >= 40
    path = data / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_admin_token(data)
    assert (again, created_again) == (token, False)
    assert read_admin_token(data) == token


def test_empty_token_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / ADMIN_TOKEN_FILE).write_text("\n")
    assert read_admin_token(tmp_path) is None
    token, created = load_or_create_admin_token(tmp_path)
    assert created and token
    assert read_admin_token(tmp_path) == token
    assert new_admin_token() != token
