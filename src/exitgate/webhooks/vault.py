"""Webhook secrets at rest: AES-256-GCM under a key the database does not hold.

A signing secret must stay readable (it is the HMAC key of every delivery), so it cannot be
hashed like a package key. It is sealed with AES-GCM (`cryptography`) under a key derived
(SHA-256) from `[webhooks] secret_key`, else from the `webhooks.key` file in the data dir
(generated, mode 0600, like `admin.token`). A copy of the database alone therefore reveals
no secret; gateways sharing one PostgreSQL database must share `secret_key`. The endpoint id
is the associated data, so a sealed secret moved to another row does not open.

Sealed form: `v1:` + base64(12-byte nonce + ciphertext and tag).
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v1:"


class SealError(ValueError):
    """A sealed secret that does not open under this gateway's key."""


class Vault:
    def __init__(self, passphrase: str) -> None:
        if not passphrase:
            raise ValueError("the webhook secret key must not be empty")
        self._aead = AESGCM(hashlib.sha256(passphrase.encode("utf-8")).digest())

    def seal(self, secret: str, owner: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode("utf-8"), owner.encode("utf-8"))
        return VERSION + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, owner: str) -> str:
        if not sealed.startswith(VERSION):
            raise SealError("unknown sealed-secret format")
        raw = base64.b64decode(sealed[len(VERSION) :])
        try:
            plain = self._aead.decrypt(raw[:12], raw[12:], owner.encode("utf-8"))
        except InvalidTag:
            reason = "the webhook secret does not open: wrong [webhooks] secret_key?"
            raise SealError(reason) from None
        return plain.decode("utf-8")
