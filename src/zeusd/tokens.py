"""Signed session tokens for TCP clients: issue them, check them, guard their key.

A token is a JWT signed with HS256 (PyJWT does the cryptography). Its claims: ``sub`` (who),
``scopes`` (API groups it may call), ``iat`` and, unless issued with ``never``, ``exp``. The
key is the whole content of a file only root should be able to read.
"""

from __future__ import annotations

import math
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
#: A compact JWS: base64url header, payload and signature. Anything else is refused before
#: PyJWT sees it (a lone surrogate, for one, made PyJWT raise an encoding error).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: Our tokens are a few hundred characters; a longer one is refused unread.
MAX_TOKEN_CHARS = 8192


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


def verify(key: bytes, token: object, now: float | None = None) -> Claims:
    """Check *token*'s shape, signature, issuer, claims and expiry at *now*. Raises TokenError.

    Whatever a client sends, the outcome is Claims or TokenError, never another exception:
    a token is client input, and an error in checking it must not become an internal error.
    """
    if not isinstance(token, str) or not token:
        raise TokenError("'token' must be a non-empty string")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"the token is longer than {MAX_TOKEN_CHARS} characters")
    if not _COMPACT_JWS.fullmatch(token):
        raise TokenError("the token is not a JWT (three base64url parts separated by dots)")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            # exp is checked below, against the daemon's clock and with its type checked.
            # iss and iat are not required: upstream zeusd's tokens carry sub, scopes and
            # exp only, and the contract is that either daemon accepts the other's tokens.
            options={"require": ["sub"], "verify_exp": False},
        )
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"the token is not valid: {exc}") from None
    except Exception as exc:  # PyJWT lets some malformed claims through as other errors
        raise TokenError(f"the token is not valid: {type(exc).__name__}") from None
    if "iss" in claims and claims["iss"] != ISSUER:
        raise TokenError(f"the token was issued by {claims['iss']!r}, not by zeusd")
    subject = claims["sub"]
    if not isinstance(subject, str):
        raise TokenError("the token's 'sub' claim is not a string")
    scopes = claims.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise TokenError("the token's 'scopes' claim is not a list of API groups")
    expires = claims.get("exp")
    expires_at: int | None = None
    if "exp" in claims:
        # bool is an int subclass; a string or NaN would otherwise mean "never expires".
        if (
            isinstance(expires, bool)
            or not isinstance(expires, int | float)
            or not math.isfinite(expires)
        ):
            raise TokenError("the token's 'exp' claim is not a number")
        expires_at = math.floor(expires)
        if (time.time() if now is None else now) >= expires:
            raise TokenError("the token has expired")
    return Claims(subject=subject, scopes=tuple(scopes), expires_at=expires_at)
