"""JSON Web Tokens as the tests make them (the standard library, HS256), and the hostile
ones every layer must refuse: shared by tests/integration/test_gateway_jwt.py (real nginx)
and tests/unit/test_gateway_js.py (gateway.js alone, in the njs interpreter)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

SECRET = b"jwt-secret-for-the-tests-0123456789abcdef"
AUDIENCE, ISSUER = "sentiment", "https://idp.example.test"
MAX_LIFETIME = 600  # seconds: the gateway's --jwt-max-lifetime here


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(
    claims: dict, secret: bytes = SECRET, header: dict | None = None, sign: bool = True, raw: str | None = None
) -> str:
    """A JWS of `claims` (or of the JSON text `raw`, for what json.dumps cannot write: 1e400)."""
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64((json.dumps(claims) if raw is None else raw).encode())
    signature = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()) if sign else ""
    return f"{head}.{body}.{signature}"


def claims(**changes) -> dict:
    now = int(time.time())
    base = {"sub": "user-1", "aud": AUDIENCE, "iss": ISSUER, "exp": now + 300, "iat": now}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def raw_claims(**texts: str) -> str:
    """claims() as JSON text, with each of `texts` (a claim's name: its JSON text) in as written."""
    fields = {name: json.dumps(value) for name, value in claims().items()} | texts
    return "{" + ", ".join(f"{json.dumps(name)}: {text}" for name, text in fields.items()) + "}"


REFUSED = {
    "expired": lambda: token(claims(exp=int(time.time()) - 120)),
    "no expiry": lambda: token(claims(exp=None)),
    "expiry 1e400 (Infinity)": lambda: token({}, raw=raw_claims(exp="1e400")),
    "expiry a float": lambda: token(claims(exp=time.time() + 300.5)),
    "expiry a string": lambda: token(claims(exp=str(int(time.time()) + 300))),
    "expiry null": lambda: token({}, raw=raw_claims(exp="null")),
    "a lifetime over the maximum": lambda: token(claims(exp=int(time.time()) + MAX_LIFETIME + 120)),
    "not yet valid": lambda: token(claims(nbf=int(time.time()) + 600)),
    "nbf a string": lambda: token(claims(nbf="0")),
    "nbf 1e400": lambda: token({}, raw=raw_claims(nbf="1e400")),
    "issued in the future": lambda: token(claims(iat=int(time.time()) + 600)),
    "iat 1e400": lambda: token({}, raw=raw_claims(iat="1e400")),
    "iat a string": lambda: token(claims(iat="now")),
    "wrong audience": lambda: token(claims(aud="someone-else")),
    "no audience": lambda: token(claims(aud=None)),
    "an audience list without ours": lambda: token(claims(aud=["other", "sentiment-x"])),
    "an audience object": lambda: token(claims(aud={"sentiment": True})),
    "wrong issuer": lambda: token(claims(iss="https://evil.example")),
    "no issuer": lambda: token(claims(iss=None)),
    "an issuer list": lambda: token(claims(iss=[ISSUER])),
    "signed with another secret": lambda: token(claims(), secret=b"not-the-secret"),
    "tampered claims": lambda: (
        lambda t: ".".join([t.split(".")[0], b64(json.dumps(claims(sub="admin")).encode()), t.split(".")[2]])
    )(token(claims())),
    "unsigned (alg none)": lambda: token(claims(), header={"alg": "none", "typ": "JWT"}, sign=False),
    "alg none with a signature": lambda: token(claims(), header={"alg": "none"}),
    "RS256 header, HMAC with the secret (algorithm confusion)": lambda: token(claims(), header={"alg": "RS256"}),
    "HS512": lambda: token(claims(), header={"alg": "HS512"}),
    "lowercase hs256": lambda: token(claims(), header={"alg": "hs256"}),
    "a critical extension": lambda: token(claims(), header={"alg": "HS256", "crit": ["exp"]}),
    "a header that is a list": lambda: (lambda t: ".".join([b64(b'["HS256"]'), *t.split(".")[1:]]))(token(claims())),
    "a padded signature": lambda: token(claims()) + "=",
    "an empty signature": lambda: token(claims(), sign=False),
    "claims that are a list": lambda: token({}, raw="[1, 2]"),
    "no subject": lambda: token(claims(sub=None)),
    "a subject with a quote": lambda: token(claims(sub='a"b')),
    "a subject with a newline (a header sent on)": lambda: token(claims(sub="user-1\n")),
    "a subject with a space": lambda: token(claims(sub="user 1")),
    "a subject of 129 characters": lambda: token(claims(sub="u" * 129)),
    "a subject that is a number": lambda: token(claims(sub=7)),
    "two parts": lambda: ".".join(token(claims()).split(".")[:2]),
    "four parts": lambda: token(claims()) + ".abc",
    "garbage": lambda: "eyJ.eyJ.abc",
}
