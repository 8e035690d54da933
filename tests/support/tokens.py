"""Tokens for tests, signed with the same python-jose the service verifies with."""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwt

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def make_token(
    sub: str | None = "alice",
    ttl: int = 300,
    *,
    secret: str = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + ttl}
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def bearer(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token()}"}


def make_es256_keys() -> tuple[str, str]:
    """A fresh P-256 key pair as PEM: (private, public)."""
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem.decode(), public_pem.decode()
