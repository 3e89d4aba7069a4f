"""JSON Web Tokens at the gateway (gateway/gateway.js): clients of an identity provider
call with a token signed HS256 with the secret the gateway is given; what the token
claims is checked, and its subject is the client the limits count.

Real nginx in front of the real TorchServe; tokens made here with the standard library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway.nginx import JwtSettings
from helpers import gateway_in_front

SECRET = b"jwt-secret-for-the-tests-0123456789abcdef"
AUDIENCE, ISSUER = "sentiment", "https://idp.example.test"
RATE, BURST = 5, 5


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims: dict, secret: bytes = SECRET, header: dict | None = None, sign: bool = True) -> str:
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()) if sign else ""
    return f"{head}.{body}.{signature}"


def claims(**changes) -> dict:
    now = time.time()
    base = {"sub": "user-1", "aud": AUDIENCE, "iss": ISSUER, "exp": now + 600, "iat": now}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jwt-gateway")
    secret = tmp / "jwt-secret"
    secret.write_bytes(SECRET + b"\n")
    clients = {"static": "static-client-key-0123456789"}
    with gateway_in_front(
        server, tmp / "gateway", clients, rate_per_s=RATE, burst=BURST, jwt=JwtSettings(secret, AUDIENCE, ISSUER)
    ) as gw:
        yield gw


def ask(gateway, bearer: str) -> requests.Response:
    return requests.post(
        gateway.url("/predictions/sentiment"),
        json={"text": "I love this"},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=60,
    )


def test_a_good_token_is_served_and_named_by_its_subject_in_the_log(gateway):
    time.sleep(1.5)  # an empty bucket
    answer = ask(gateway, token(claims(sub="reader-7")))
    assert answer.status_code == 200 and answer.json()["label"] == "positive"
    assert ask(gateway, token(claims(sub="reader-7", aud=["other", AUDIENCE]))).status_code == 200
    log = gateway.log_file.read_text()
    assert '"client":"jwt:reader-7"' in log
    assert token(claims(sub="reader-7")).split(".")[2] not in log


REFUSED = {
    "expired": lambda: token(claims(exp=time.time() - 120)),
    "no expiry": lambda: token(claims(exp=None)),
    "not yet valid": lambda: token(claims(nbf=time.time() + 600)),
    "wrong audience": lambda: token(claims(aud="someone-else")),
    "no audience": lambda: token(claims(aud=None)),
    "wrong issuer": lambda: token(claims(iss="https://evil.example")),
    "signed with another secret": lambda: token(claims(), secret=b"not-the-secret"),
    "tampered claims": lambda: (
        lambda t: ".".join([t.split(".")[0], b64(json.dumps(claims(sub="admin")).encode()), t.split(".")[2]])
    )(token(claims())),
    "unsigned (alg none)": lambda: token(claims(), header={"alg": "none", "typ": "JWT"}, sign=False),
    "alg none with a signature": lambda: token(claims(), header={"alg": "none"}),
    "RS256 header, HMAC with the secret (algorithm confusion)": lambda: token(claims(), header={"alg": "RS256"}),
    "HS512": lambda: token(claims(), header={"alg": "HS512"}),
    "no subject": lambda: token(claims(sub=None)),
    "a subject with a quote": lambda: token(claims(sub='a"b')),
    "two parts": lambda: ".".join(token(claims()).split(".")[:2]),
    "garbage": lambda: "eyJ.eyJ.abc",
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_bad_token_is_refused_with_401(gateway, case):
    answer = ask(gateway, REFUSED[case]())
    assert answer.status_code == 401 and answer.json()["type"] == "Unauthorized", answer.text


def test_limits_count_per_subject_across_its_tokens(gateway):
    """Two tokens of one subject share its rate; another subject and a static key are unaffected."""
    time.sleep(1.5)
    first, second = token(claims(sub="busy", jti="1")), token(claims(sub="busy", jti="2"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: ask(gateway, first if i % 2 else second), range(32)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(429) >= 10, statuses  # far over the burst of one bucket
    assert ask(gateway, token(claims(sub="calm"))).status_code == 200
    assert ask(gateway, "static-client-key-0123456789").status_code == 200
