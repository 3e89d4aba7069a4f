"""JSON Web Tokens at the gateway (gateway/gateway.js): clients of an identity provider
call with a token signed HS256 with the secret the gateway is given; what the token
claims is checked, and its subject is the client the limits count. And the clients file
beside them, judged whole on every read: a bad line is ignored (and logged by its number),
the others are served.

Real nginx in front of the real TorchServe; tokens made here with the standard library.
tests/unit/test_gateway_js.py runs the same hostile tokens (REFUSED) through gateway.js
without nginx."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from jwt_tokens import AUDIENCE, ISSUER, MAX_LIFETIME, REFUSED, SECRET, claims, token

from gateway.__main__ import main as gateway_main
from gateway.nginx import JwtSettings
from helpers import gateway_in_front, poll

RATE, BURST = 5, 5
STATIC_KEY = "static-client-key-0123456789"
# the tests send more bad tokens in a row than the shipped burst of failed authentications
NO_AUTH_LIMIT = {"auth_failure_rate_per_s": 1000, "auth_failure_burst": 1000}


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jwt-gateway")
    secret = tmp / "jwt-secret"
    secret.write_bytes(SECRET + b"\n")
    clients = {"static": STATIC_KEY}
    jwt = JwtSettings(secret, AUDIENCE, ISSUER, max_lifetime_s=MAX_LIFETIME)
    with gateway_in_front(
        server, tmp / "gateway", clients, rate_per_s=RATE, burst=BURST, jwt=jwt, **NO_AUTH_LIMIT
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
    assert ask(gateway, STATIC_KEY).status_code == 200


def test_a_token_within_the_limits_is_served(gateway):
    """exp exactly the maximum lifetime ahead, iat a fraction of a second (any finite number),
    nbf past: served."""
    now = int(time.time())
    good = token(claims(sub="edge", exp=now + MAX_LIFETIME, iat=time.time() - 0.5, nbf=now - 60))
    assert ask(gateway, good).status_code == 200


def test_jwt_settings_without_an_audience_or_issuer_or_with_a_short_secret_do_not_start(tmp_path, capsys):
    """No gateway starts taking tokens of any audience or issuer, or signed with a guessable
    secret: JwtSettings refuses, and so does the command line, naming the rule and never the
    secret."""
    good, short = tmp_path / "secret", tmp_path / "short"
    good.write_bytes(SECRET)
    short_secret = b"s" * 31
    short.write_bytes(b"  " + short_secret + b"\n")  # 31 bytes once the whitespace is left out
    for audience, issuer, what in (("", ISSUER, "audience"), (AUDIENCE, "", "issuer")):
        with pytest.raises(ValueError, match=what):
            JwtSettings(good, audience, issuer)
    with pytest.raises(ValueError, match="lifetime"):
        JwtSettings(good, AUDIENCE, ISSUER, max_lifetime_s=0)
    with pytest.raises(ValueError, match="at least 32 bytes") as refused:
        JwtSettings(short, AUDIENCE, ISSUER)
    assert short_secret.decode() not in str(refused.value)
    with pytest.raises(ValueError, match="cannot be read"):
        JwtSettings(tmp_path / "none", AUDIENCE, ISSUER)
    JwtSettings(good, AUDIENCE, ISSUER)  # 41 bytes: taken

    base = ["--node", str(tmp_path), "--client", f"static={STATIC_KEY}", "--workdir", str(tmp_path / "gw")]
    for args, what in (
        (["--jwt-secret-file", str(good), "--jwt-issuer", ISSUER], "audience"),
        (["--jwt-secret-file", str(good), "--jwt-audience", AUDIENCE], "issuer"),
        (["--jwt-secret-file", str(short), "--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER], "32 bytes"),
        (["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER], "--jwt-secret-file"),
    ):
        with pytest.raises(SystemExit) as exited:
            gateway_main(base + args)
        error = capsys.readouterr().err
        assert exited.value.code == 2 and what in error, error
        assert short_secret.decode() not in error


def test_a_secret_shortened_at_run_time_refuses_every_token(gateway):
    """The secret is read on every request: once it is shorter than 32 bytes no token is
    taken, whatever it is signed with (logged, without the secret); the static keys go on."""
    secret_file = gateway.settings.jwt.secret_file
    short_secret = b"t" * 31

    def write(secret: bytes) -> None:
        new = secret_file.with_name("jwt-secret.new")
        new.write_bytes(secret + b"\n")
        os.replace(new, secret_file)

    time.sleep(1.5)  # an empty bucket
    try:
        write(short_secret)
        assert ask(gateway, token(claims(sub="short"), secret=short_secret)).status_code == 401
        assert ask(gateway, token(claims(sub="short"))).status_code == 401
        assert ask(gateway, STATIC_KEY).status_code == 200
        log = gateway.log_file.read_text()
        assert "the JWT secret is shorter than 32 bytes: every token is refused" in log
        assert short_secret.decode() not in log
    finally:
        write(SECRET)
    assert ask(gateway, token(claims(sub="short"))).status_code == 200


def test_a_clients_file_edited_at_run_time_keeps_its_good_lines(server, tmp_path):
    """A line the gateway cannot take (a 3-character key, a name that looks like a token's
    subject, a key two clients share) is ignored and logged by its number, never its text;
    the other clients are served as before, and no line can pass for a token's subject."""
    clients_file, secret = tmp_path / "clients", tmp_path / "jwt-secret"
    secret.write_bytes(SECRET)
    carol, dave, alice = "carol-key-" + "c" * 22, "dave-key-" + "d" * 23, "alice-line-key-" + "a" * 17
    shared = "shared-key-" + "s" * 21

    def write(lines):  # as the kubelet updates a Secret: a new file swapped in
        (tmp_path / "clients.new").write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp_path / "clients.new", clients_file)

    write([f"carol={carol}", f"dave={dave}"])
    jwt = JwtSettings(secret, AUDIENCE, ISSUER)
    with gateway_in_front(server, tmp_path / "gateway", clients_file, jwt=jwt, **NO_AUTH_LIMIT) as gateway:
        assert ask(gateway, carol).status_code == 200
        write(
            [
                "# the clients",
                f"carol={carol}",
                "short=Zq9",
                f"jwt:alice={alice}",
                f"dave = {dave}",
                f"eve={shared}",
                f"frank={shared}",
            ]
        )
        assert [ask(gateway, key).status_code for key in (carol, dave)] == [200, 200]
        assert [ask(gateway, key).status_code for key in ("Zq9", alice, shared)] == [401, 401, 401]
        # the subject alice is a token's, and only a token's
        assert ask(gateway, token(claims(sub="alice"))).status_code == 200
        log = gateway.log_file.read_text()
        assert "js: clients file: ignored line(s) 3 (key), 4 (name), 6 (ambiguous), 7 (ambiguous)" in log
        assert not any(text in log for text in (carol, dave, alice, shared, "short=", "Zq9", "request:")), log
        clients = [json.loads(line)["client"] for line in log.splitlines() if line.startswith("{")]
        assert clients.count("carol") == 2 and "dave" in clients and clients.count("jwt:alice") == 1, clients
        write([f"carol={carol}", f"dave={dave}", f"eve={shared}"])  # the file mended: eve's at once
        assert poll(lambda: ask(gateway, shared), lambda r: r.status_code == 200).status_code == 200


def test_a_clients_file_with_a_bad_line_is_refused_at_start(server, tmp_path):
    """At start the gateway refuses what it would ignore later: it says which line, not what is on it."""
    clients_file = tmp_path / "clients"
    key = "a-good-key-0123456789"
    clients_file.write_text(f"carol={key}\njwt:alice={key}x\n")
    with pytest.raises(ValueError, match="line 2: a client name") as refused:
        with gateway_in_front(server, tmp_path / "gateway", clients_file):
            pass
    assert key not in str(refused.value) and "alice" not in str(refused.value)
