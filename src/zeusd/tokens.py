"""Signed session tokens for TCP clients: issue them, check them, guard their key.

A token is a JWT signed with HS256 (PyJWT does the cryptography). Its claims: ``sub`` (who),
``scopes`` (API groups it may call), ``iat`` and, unless issued with ``never``, ``exp``. The
key is the whole content of a file only root should be able to read.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable

import attrs
import jwt

ISSUER = "zeusd"
ALGORITHM = "HS256"
#: HS256 keys shorter than the hash output weaken the signature (RFC 7518 section 3.2).
MIN_KEY_BYTES = 32
_DURATION = re.compile(r"([1-9][0-9]*)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenKeyError(Exception):
    """The key file cannot be used; the message says why and what to do."""


class TokenError(Exception):
    """A token was refused; the message is safe to show to the client."""


@attrs.frozen(kw_only=True)
class Claims:
    subject: str
    scopes: tuple[str, ...]
    expires_at: int | None


def load_key(path: str) -> bytes:
    """Read the signing key, refusing a file that group or others can read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenKeyError(f"cannot open token key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        # fstat on the open file: the mode checked is the mode of the bytes read.
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise TokenKeyError(f"token key {path} is not a regular file")
        if st.st_mode & 0o066:
            raise TokenKeyError(
                f"token key {path} has mode {stat.S_IMODE(st.st_mode):03o}: group or others "
                f"can access it; run 'chmod 600 {path}'"
            )
        key = f.read()
    if len(key) < MIN_KEY_BYTES:
        raise TokenKeyError(
            f"token key {path} holds {len(key)} bytes; it needs at least {MIN_KEY_BYTES} "
            f"random bytes (e.g. 'head -c 32 /dev/urandom > {path}')"
        )
    return key


def parse_expiry(text: str) -> int | None:
    """``never`` -> None; ``90s``, ``15m``, ``1h``, ``7d`` -> seconds. Raises ValueError."""
    if text == "never":
        return None
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"expected a duration like 1h or 7d, or 'never' (got {text!r})")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def issue(
    key: bytes,
    subject: str,
    scopes: Iterable[str],
    lifetime_s: int | None,
    now: float | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "iss": ISSUER,
        "sub": subject,
        "scopes": list(scopes),
        "iat": issued,
    }
    if lifetime_s is not None:
        claims["exp"] = issued + lifetime_s
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(key: bytes, token: object) -> Claims:
    """Check *token*'s signature, issuer and expiry. Raises TokenError."""
    if not isinstance(token, str) or not token:
        raise TokenError("'token' must be a non-empty string")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["iss", "sub", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"the token is not valid: {exc}") from None
    subject = claims["sub"]
    scopes = claims.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise TokenError("the token's 'scopes' claim is not a list of API groups")
    expires = claims.get("exp")
    return Claims(
        subject=str(subject),
        scopes=tuple(scopes),
        expires_at=int(expires) if isinstance(expires, int | float) else None,
    )
