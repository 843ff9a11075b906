"""Session tokens: issuing, checking, and guarding the key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

import jwt
import pytest

from zeusd import tokens

KEY = b"k" * 32


def test_issued_token_verifies_with_its_claims() -> None:
    """A token carries its subject, scopes and expiry through verification."""
    token = tokens.issue(KEY, "alice", ["gpu-read"], 3600)
    claims = tokens.verify(KEY, token)
    assert claims.subject == "alice"
    assert claims.scopes == ("gpu-read",)
    assert claims.expires_at is not None
    assert claims.expires_at > time.time()


def test_never_expiring_token_has_no_expiry() -> None:
    """``--expires never`` gives a token without ``exp``."""
    claims = tokens.verify(KEY, tokens.issue(KEY, "ci", ["gpu-control"], None))
    assert claims.expires_at is None


def test_expired_token_is_refused() -> None:
    """A token past its expiry is refused with a message saying so."""
    token = tokens.issue(KEY, "bob", ["gpu-read"], 60, now=time.time() - 3600)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(KEY, token)


@pytest.mark.parametrize(
    "token",
    [
        tokens.issue(b"x" * 32, "eve", ["gpu-control"], None),  # another daemon's key
        jwt.encode({"iss": "zeusd", "sub": "eve", "iat": 1, "scopes": []}, None, "none"),
        jwt.encode({"iss": "other", "sub": "eve", "iat": 1, "scopes": []}, KEY, "HS256"),
        jwt.encode({"iss": "zeusd", "sub": "eve", "iat": 1, "scopes": "gpu-control"}, KEY),
        "not.a.token",
        "",
    ],
)
def test_forged_or_malformed_tokens_are_refused(token: str) -> None:
    """Wrong key, alg none, another issuer, bad scopes and garbage are all refused."""
    with pytest.raises(tokens.TokenError):
        tokens.verify(KEY, token)


def test_upstream_tokens_are_accepted() -> None:
    """Upstream zeusd's tokens (HS256 with sub, scopes and exp only) verify with the same key."""
    upstream = jwt.encode({"sub": "bob", "scopes": ["gpu-read"], "exp": 4102444800}, KEY, "HS256")
    claims = tokens.verify(KEY, upstream, now=1.0)
    assert (claims.subject, claims.scopes, claims.expires_at) == ("bob", ("gpu-read",), 4102444800)
    no_expiry = jwt.encode({"sub": "bob", "scopes": []}, KEY, "HS256")
    assert tokens.verify(KEY, no_expiry).expires_at is None


def test_our_tokens_carry_what_upstream_reads() -> None:
    """Ours are HS256 with sub, scopes (API group names) and exp, as upstream's Claims are."""
    token = tokens.issue(KEY, "carol", ["gpu-control", "cpu-read"], 3600, now=1000)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["sub"] == "carol"
    assert claims["scopes"] == ["gpu-control", "cpu-read"]
    assert claims["exp"] == 4600


def _signed(**claims: object) -> str:
    return jwt.encode({"iss": "zeusd", "sub": "eve", "iat": 1, "scopes": []} | claims, KEY)


def _crafted(payload: bytes) -> str:
    """A correctly signed token whose payload is *payload* as is (JSON PyJWT would not write)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload)
    signature = hmac.new(KEY, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


_NOT_TOKENS: list[object] = [
    "\ud800",  # a lone surrogate: PyJWT raised UnicodeEncodeError (-32603 with a traceback)
    "\ud800.\ud800.\ud800",
    "a.b.c\n2026-12-02 08:00:00,000 INFO zeusd.audit: forged",
    "x" * 100_000,
    5,
    None,
    True,
    ["a.b.c"],
    {"token": "a.b.c"},
    _signed(exp=[1]),
    _signed(exp="99999999999"),  # a string: it used to mean "never expires"
    _signed(exp=None),
    _signed(exp=True),
    _signed(exp={"at": 1}),
    _signed(iat=[1]),
    _signed(nbf={}),
    _signed(sub=5),
    _signed(scopes=[1]),
    _crafted(b'{"iss":"zeusd","sub":"eve","iat":1,"scopes":[],"exp":Infinity}'),
    _crafted(b'{"iss":"zeusd","sub":"eve","iat":1,"scopes":[],"exp":NaN}'),
    _crafted(b'{"iss":"zeusd","sub":"eve","iat":Infinity,"scopes":[]}'),
    _crafted(b"[1,2,3]"),
    _crafted(b"\xff\xfe"),
    _crafted(b"[" * 100_000),
]


@pytest.mark.parametrize("token", _NOT_TOKENS, ids=range(len(_NOT_TOKENS)))
def test_anything_but_a_valid_token_is_a_token_error(token: object) -> None:
    """Non-strings, non-JWTs and tokens with mistyped claims raise TokenError, nothing else."""
    with pytest.raises(tokens.TokenError):
        tokens.verify(KEY, token)


def test_expiry_is_checked_against_the_given_clock() -> None:
    """``now`` decides expiry: before exp the token is good, at exp it is refused."""
    token = tokens.issue(KEY, "a", ["gpu-read"], 60, now=1000)
    assert tokens.verify(KEY, token, now=1059.5).expires_at == 1060
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(KEY, token, now=1060)


def test_tampered_payload_is_refused() -> None:
    """Changing the payload breaks the signature."""
    header, _payload, signature = tokens.issue(KEY, "a", ["gpu-read"], None).split(".")
    forged = jwt.encode({"iss": "zeusd", "sub": "a", "iat": 1, "scopes": ["gpu-control"]}, "k" * 32)
    assert tokens.verify(KEY, forged).scopes == ("gpu-control",)  # control: same key works
    other_payload = forged.split(".")[1]
    with pytest.raises(tokens.TokenError):
        tokens.verify(KEY, f"{header}.{other_payload}.{signature}")


def _key_file(directory: str, mode: int, content: bytes = KEY) -> str:
    path = os.path.join(directory, "key")
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602, 0o644])
def test_key_accessible_to_others_is_refused(tmp_path: str, mode: int) -> None:
    """A key file group or others can read or write is refused, naming the fix."""
    path = _key_file(str(tmp_path), mode)
    with pytest.raises(tokens.TokenKeyError, match="chmod 600"):
        tokens.load_key(path)


def test_private_key_is_loaded(tmp_path: str) -> None:
    """A 0600 (or 0400) key file is read whole."""
    assert tokens.load_key(_key_file(str(tmp_path), 0o400)) == KEY


def test_short_key_is_refused(tmp_path: str) -> None:
    """A key shorter than 32 bytes is refused."""
    with pytest.raises(tokens.TokenKeyError, match="at least 32"):
        tokens.load_key(_key_file(str(tmp_path), 0o600, b"secret\n"))


def test_key_through_symlink_is_refused(tmp_path: str) -> None:
    """The key is not read through a symlink (whose target's mode was not checked)."""
    target = _key_file(str(tmp_path), 0o600)
    link = os.path.join(str(tmp_path), "link")
    os.symlink(target, link)
    with pytest.raises(tokens.TokenKeyError, match="cannot open"):
        tokens.load_key(link)


def test_missing_key_is_refused(tmp_path: str) -> None:
    """A missing key file is a clear error."""
    with pytest.raises(tokens.TokenKeyError, match="cannot open"):
        tokens.load_key(os.path.join(str(tmp_path), "absent"))


@pytest.mark.parametrize(
    ("text", "seconds"), [("never", None), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)]
)
def test_parse_expiry(text: str, seconds: int | None) -> None:
    """Durations and ``never`` parse to seconds."""
    assert tokens.parse_expiry(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "1w", "h", "-1h", "1.5h", "forever"])
def test_parse_expiry_rejects(text: str) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError, match="duration"):
        tokens.parse_expiry(text)
