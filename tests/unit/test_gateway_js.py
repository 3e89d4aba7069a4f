"""gateway/gateway.js without nginx: Debian's njs command-line interpreter (the same njs
0.7 as nginx's module) runs the file's code with a stub request, its `variables` and
`headersIn` as the config sets them, reading real files written here; `ngx.log` is a stub
that records what would be logged.

Who calls (client()): the Authorization header and a client key's rules; the clients
file judged line by line, its bad lines ignored and logged by number only; the JSON Web
Tokens, with every hostile token of tests/integration/test_gateway_jwt.py. The node's key
(nodeKey), taken only whole. A request while a node's key rotates: sent on at once; sent
once more, when the lock goes (at once with a stale one, never later than a lock's life: the
waits counted as polls of a stub timer), only when TorchServe refused it for its key; any
other answer, a handler's 400 included, passed back as it came. And the rules shown the
same in both languages: one table of names, keys and files through gateway.js's
parseClients and gateway/nginx.py's parse_clients, and one of lock files through lockHeld
and common/keys.py's lock_is_fresh, the same verdicts. (The path checks are nginx's maps, not gateway.js:
tests/unit/test_gateway_routes.py and tests/integration/test_gateway_paths.py.)"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from jwt_tokens import AUDIENCE, ISSUER, MAX_LIFETIME, REFUSED, SECRET, claims, raw_claims, token

from common.paths import ROOT
from gateway.nginx import CLIENT_LINE_PROBLEMS, CLIENT_NAME, MIN_JWT_SECRET_BYTES, client_problem, parse_clients

GATEWAY_JS = ROOT / "gateway" / "gateway.js"
NJS = shutil.which("njs")
if NJS is None:  # make test-unit installs it: a run without it fails rather than skip these
    pytest.fail("Debian's njs interpreter is missing: apt-get install njs (make test-unit installs it)", pytrace=False)

# What nginx gives the module and the CLI does not: `ngx` (its log recorded here)
PRELUDE = """
var LOGS = [];
var ngx = {INFO: 7, WARN: 5, ERR: 4, log: function (level, message) { LOGS.push([level, String(message)]); }};
// The CLI has no timers: setTimeout queues its callback, and the driver runs the queue,
// counting each as a poll (rotating()'s waits are counted, not timed).
var TIMERS = [];
function setTimeout(fn, ms) { TIMERS.push([fn, ms]); }
"""
# Runs CALLS, one {fn, args} or {fn: "client", variables, headers} each, and writes to
# OUTPUT (the CLI's console.log cuts lines at 2 KiB) per call its value (or the exception
# it threw) and what it logged.
DRIVER = """
var CALLS = %s, OUTPUT = %s;
var FUNCTIONS = {parseClients: parseClients, clientProblem: clientProblem, lockHeld: lockHeld};
// rotating(r): a request at /_rotating/<path>, whose subrequests get call.replies in turn
// ({status, body}, JSON with type InvalidKeyException for TorchServe's refusal of a key);
// what it sent on (each subrequest, after how many polls) and what it answered, the lock
// file removed after call.remove_after polls and call.new_key written into the key file
// after call.new_key_after, when those are set
function runRotating(call) {
    var r = {variables: call.variables, uri: '/_rotating' + call.path, method: 'POST', headersOut: {}};
    var sent = [], answered = null, polls = 0;
    r.subrequest = function (uri, options, done) {
        sent.push({uri: uri, method: options.method, args: options.args, polls: polls});
        var reply = call.replies[sent.length - 1];
        var headers = {'Content-Type': 'application/json', 'X-Other': 'dropped'};
        if (reply.retry_after) {
            headers['Retry-After'] = reply.retry_after;
        }
        done({status: reply.status, headersOut: headers, responseBuffer: Buffer.from(reply.body)});
    };
    r.return = function (status, body) {
        answered = {status: status, headers: r.headersOut, body: String(body)};
    };
    TIMERS = [];
    rotating(r);
    while (TIMERS.length) {
        polls += 1;
        if (polls === call.remove_after) {
            require('fs').unlinkSync(call.variables.node_dir + '/' + call.variables.rotation_lock);
        }
        if (polls === call.new_key_after) {
            require('fs').writeFileSync(call.variables.node_dir + '/' + call.variables.key_file, call.new_key);
        }
        TIMERS.shift()[0]();
    }
    return {sent: sent, answered: answered};
}
require('fs').writeFileSync(OUTPUT, JSON.stringify(CALLS.map(function (call) {
    LOGS = [];
    var value = null, error = null;
    try {
        if (call.fn === 'client' || call.fn === 'nodeKey') {
            value = (call.fn === 'client' ? client : nodeKey)({variables: call.variables, headersIn: call.headers});
        } else if (call.fn === 'rotating') {
            value = runRotating(call);
        } else {
            value = FUNCTIONS[call.fn].apply(null, call.args);
        }
    } catch (e) {
        error = String(e);
    }
    return {value: value === undefined ? null : value, error: error, logs: LOGS};
})));
"""
LOG_CRIT = 3  # nginx's NGX_LOG_CRIT: the config's error_log level


def module_code() -> str:
    """gateway.js as a script: its one `export default` line (a module's, which a script
    cannot have) left out."""
    code, exports = re.subn(r"^export default \{[^}]*\};[ \t]*$", "", GATEWAY_JS.read_text(), flags=re.M)
    assert exports == 1, "gateway.js should end with one `export default {...};` line"
    return code


def run_njs(calls: list[dict[str, Any]], tmp: Path) -> list[dict[str, Any]]:
    assert NJS is not None
    script = tmp / "gateway-test.js"
    output = tmp / "gateway-test.json"
    output.unlink(missing_ok=True)
    script.write_text(PRELUDE + module_code() + DRIVER % (json.dumps(calls), json.dumps(str(output))))
    done = subprocess.run([NJS, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and output.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    results: list[dict[str, Any]] = json.loads(output.read_text())
    for result in results:
        assert result["error"] is None, result
    return results


def call(fn: str, *args: Any, tmp: Path) -> Any:
    return run_njs([{"fn": fn, "args": list(args)}], tmp)[0]["value"]


class Gateway:
    """What gateway.js sees of one gateway: its clients file and JWT settings (as the
    config's variables), and the Authorization header of each request."""

    def __init__(self, tmp: Path, clients: str = "", secret: bytes | None = SECRET, **variables: str) -> None:
        self.tmp = tmp
        self.clients_file = tmp / "clients"
        self.clients_file.write_text(clients)
        self.variables = {"clients_file": str(self.clients_file), "jwt_secret_file": ""}
        if secret is not None:
            (tmp / "jwt-secret").write_bytes(secret)
            self.variables |= {
                "jwt_secret_file": str(tmp / "jwt-secret"),
                "jwt_audience": AUDIENCE,
                "jwt_issuer": ISSUER,
                "jwt_max_lifetime": str(MAX_LIFETIME),
            }
        self.variables |= variables

    def answers(self, authorizations: list[str | None]) -> list[dict[str, Any]]:
        calls = [
            {"fn": "client", "variables": self.variables, "headers": {} if a is None else {"Authorization": a}}
            for a in authorizations
        ]
        return run_njs(calls, self.tmp)

    def clients(self, authorizations: list[str | None]) -> list[str]:
        return [answer["value"] for answer in self.answers(authorizations)]

    def client(self, authorization: str | None) -> str:
        return self.clients([authorization])[0]

    def bearer(self, key: str) -> str:
        return self.client(f"Bearer {key}")


# --- client keys and the Authorization header ---------------------------------------------

K16, K64, K512 = "k" * 16, "0123456789abcdef" * 4, "Z" * 512


def test_a_key_is_taken_only_as_a_bearer_token(tmp_path):
    gateway = Gateway(tmp_path, f"alice={K64}\n", secret=None)
    assert (
        gateway.clients(
            [
                f"Bearer {K64}",
                None,
                "",
                K64,
                f"bearer {K64}",
                f"Basic {K64}",
                f"Bearer  {K64}",  # two spaces
                f"Bearer {K64} ",
                f"Bearer\t{K64}",
                f"Bearer {K64}\n",
                f"Bearer {K64}x",
                f"Bearer {K64[:-1]}",
                "Bearer ",
                "Bearer",
            ]
        )
        == ["alice"] + [""] * 13
    )


@pytest.mark.parametrize(
    ("key", "taken"),
    [
        (K16, True),
        ("k" * 15, False),
        (K512, True),
        ("Z" * 513, False),
        ("Z" * 510 + "==", True),
        ("Z" * 511 + "==", False),  # 513 with its padding
        ("k" * 15 + "=", True),  # 16 in all
        ("abcdefghijklmnop==", True),
        ("abc=defghijklmnopq", False),  # '=' only at the end
        ("=" * 16, False),
        ("AZaz09-._~+/" + "x" * 4, True),  # every character of the alphabet
        ("k" * 15 + '"', False),
        ("k" * 15 + "%", False),
        ("k" * 15 + ":", False),
        ("k" * 15 + "é", False),
        ("k" * 8 + " " + "k" * 8, False),
    ],
)
def test_a_client_key_is_16_to_512_characters_of_rfc_6750s_token(tmp_path, key, taken):
    gateway = Gateway(tmp_path, f"alice={key}\n", secret=None)
    assert gateway.bearer(key) == ("alice" if taken else "")
    assert (client_problem("alice", key) is None) == taken  # nginx.py: the same rule


def test_an_authorization_header_over_8_kib_is_refused(tmp_path):
    gateway = Gateway(tmp_path, f"alice={K64}\n")
    assert gateway.client("Bearer " + "a" * 8185) == ""
    assert gateway.client("Bearer " + "a" * 8185 + "x") == ""


# --- the clients file -----------------------------------------------------------------------


def test_bad_lines_are_ignored_and_logged_by_number_and_the_rest_kept(tmp_path):
    lines = [
        "# the clients of the gateway",
        "",
        f"alice={K64}",
        "short=abc",  # a key of 3
        f"jwt:alice={'j' * 20}",  # a name that looks like a token's subject
        f"bob = {'b' * 20}\r",  # spaces around '=', a CRLF line
        f"{'n' * 65}={'x' * 20}",  # a name of 65
        "no-equals-sign-at-all-" + "q" * 20,
        f"=key-without-a-name-{'y' * 10}",
        f"carol={K512}",
        "\t",
        f"dave={K16}",
    ]
    gateway = Gateway(tmp_path, "\n".join(lines) + "\n", secret=None)
    answers = gateway.answers(
        [f"Bearer {k}" for k in (K64, "b" * 20, K512, K16, "abc", "j" * 20, "x" * 20, "q" * 20, "y" * 10)]
    )
    assert [a["value"] for a in answers] == ["alice", "bob", "carol", "dave"] + [""] * 5
    refused = "clients file: ignored line(s) 4 (key), 5 (name), 7 (name), 8 (form), 9 (name)"
    for answer in answers:  # every read judges the whole file, and logs what it ignores
        assert answer["logs"] == [[LOG_CRIT, refused]]
    text = json.dumps(answers)
    assert not any(secret in text for secret in ("abc", "j" * 20, "x" * 20, "q" * 20, "y" * 10, K64))


def test_a_key_of_two_clients_is_refused_on_both_lines(tmp_path):
    shared, own = "s" * 20, "o" * 20
    gateway = Gateway(tmp_path, f"eve={shared}\nfrank={own}\nmallory={shared}\n", secret=None)
    answers = gateway.answers([f"Bearer {shared}", f"Bearer {own}"])
    assert [a["value"] for a in answers] == ["", "frank"]
    assert answers[0]["logs"] == [[LOG_CRIT, "clients file: ignored line(s) 1 (ambiguous), 3 (ambiguous)"]]


def test_one_client_may_have_two_keys_and_a_key_may_be_repeated(tmp_path):
    """A key rotation: the new key's line added beside the old one's, then the old one removed."""
    old, new = "old-key-" + "o" * 12, "new-key-" + "n" * 12
    gateway = Gateway(tmp_path, f"alice={old}\nalice={new}\nalice={new}\n", secret=None)
    answers = gateway.answers([f"Bearer {old}", f"Bearer {new}"])
    assert [a["value"] for a in answers] == ["alice", "alice"] and answers[0]["logs"] == []


def test_a_missing_or_empty_clients_file_serves_no_key(tmp_path):
    gateway = Gateway(tmp_path, "", secret=None)
    assert gateway.answers([f"Bearer {K64}"]) == [{"value": "", "error": None, "logs": []}]
    gateway.clients_file.unlink()
    assert gateway.bearer(K64) == ""


def test_the_key_lookup_compares_every_line(tmp_path):
    """The token is compared with every key, none skipped after a match: the lookup takes
    the same steps whichever line matches (gateway.js compares HMACs, each under a random
    key of its request's own, so that no comparison stops early on a shared prefix)."""
    code = GATEWAY_JS.read_text()
    lookup = code[code.index("function staticClient(") : code.index("function b64json(")]
    assert "return clients.taken" not in lookup and "break" not in lookup
    assert re.search(r"for \(var i = 0; i < clients\.taken\.length; i\+\+\) \{[^}]*mac\(", lookup)
    assert "getRandomValues" in code[code.index("function secretMac(") : code.index("function staticClient(")]
    keys = [f"key-{i:02d}-" + "x" * 16 for i in range(40)]
    gateway = Gateway(tmp_path, "".join(f"c{i}={key}\n" for i, key in enumerate(keys)), secret=None)
    assert gateway.clients([f"Bearer {key}" for key in keys]) == [f"c{i}" for i in range(40)]


# --- one rule in both languages ---------------------------------------------------------------

NAME_KEY_TABLE = [
    ("alice", K16),
    ("a", K512),
    ("n" * 64, K64),
    ("n" * 65, K64),
    ("", K64),
    ("jwt:alice", K64),
    ("jwt", K64),
    ("a.b_c-d", K64),
    ("a b", K64),
    ("a\tb", K64),
    ("alice\n", K64),
    ("alice", K64 + "\n"),
    ("alice", "\n" + K64),
    ("alice", "k" * 15),
    ("alice", "Z" * 513),
    ("alice", "Z" * 510 + "=="),
    ("alice", "Z" * 511 + "=="),
    ("alice", "k" * 15 + "="),
    ("alice", "k" * 14 + "=="),
    ("alice", "=" * 20),
    ("alice", "k" * 10 + "=" + "k" * 10),
    ("alice", "k" * 20 + '"'),
    ("alice", "k" * 20 + "\\"),
    ("alice", "k" * 20 + "é"),
    ("alice", "k" * 20 + "\u00a0"),
    ("alice", "k" * 20 + "\u2028"),
    ("alice", "k" * 20 + "\U0001f600"),
    ("alicé", K64),
    ("\ufeffalice", K64),
    ("alice", "AZaz09-._~+/" * 3),
    ("a:b", K64),
    ("a=b", K64),
    ("a#b", K64),
    ("#alice", K64),
]
# characters near the rules' edges: their alphabets, separators, whitespace, non-ASCII
EDGE_CHARS = "aZ09-._~+/=:# \t\r\n\x00\x0b\x1c\u00a0\u2028\ufeffé\U0001f600\"'%"


def random_table(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)

    def text(lengths: tuple[int, ...]) -> str:
        length = rng.choice(lengths)
        pool = rng.choice([EDGE_CHARS, "abcXYZ019-._~+/", "abc="])
        return "".join(rng.choice(pool) for _ in range(length))

    return [(text((0, 1, 5, 63, 64, 65)), text((1, 15, 16, 17, 40, 511, 512, 513))) for _ in range(n)]


def test_python_and_njs_judge_every_name_and_key_alike(tmp_path):
    table = NAME_KEY_TABLE + random_table(seed=28, n=600)
    calls = [{"fn": "clientProblem", "args": [name, key]} for name, key in table]
    njs = [result["value"] for result in run_njs(calls, tmp_path)]
    python = [client_problem(name, key) for name, key in table]
    assert njs == python
    assert {"name", "key", None} <= set(python)  # the table reaches each verdict


CLIENT_FILES = [
    "",
    "\n\n",
    f"alice={K64}",
    f"alice={K64}\nbob={K16}\n",
    f"  alice \t=\t {K64}  \r\n# comment\n\t# indented comment\nbob={K16}\r\n",
    f"alice={K64}\nalice={K16}\n",
    f"eve={K64}\nfrank={K64}\nzoe={K16}\neve={K64}\n",
    f"alice={K64}=\n",  # the '=' at the end: padding, one more character
    f"alice=={K64}\n",  # the key starts with '='
    f"jwt:alice={K64}\nbob={K16}\n",
    f"short=abc\nlong={'Z' * 513}\nok={K512}\n",
    "no equals sign here\n",
    f"\ufeffalice={K64}\nbob={K16}\n",  # a byte-order mark makes line 1's name unknown
    f"alice={K64}\u2028bob={K16}\n",  # only "\n" ends a line
    f"alice={K64}\x0bbob={K16}\x0c\n",
    f"alice={K64}\rbob={K16}\n",
    f"a={K64}\nb=\nc={K16}\n=\n",
]


def test_python_and_njs_judge_every_clients_file_alike(tmp_path):
    """The same verdicts line by line: taken (line, name, key) and refused (line, problem)."""
    rng = random.Random(6750)
    pairs = NAME_KEY_TABLE + random_table(seed=7, n=200)
    shuffled = [f"{name}={key}" for name, key in rng.sample(pairs, len(pairs))] + ["# x", "", f"dup={K64}"]
    files = [*CLIENT_FILES, "\n".join(shuffled)]
    njs = [result["value"] for result in run_njs([{"fn": "parseClients", "args": [f]} for f in files], tmp_path)]
    for text, judged in zip(files, njs, strict=True):
        taken, refused = parse_clients(text)
        assert judged == {"taken": [list(t) for t in taken], "refused": [list(r) for r in refused]}, text
        assert {problem for _, problem in refused} <= set(CLIENT_LINE_PROBLEMS)


def test_the_rules_constants_are_the_same_in_both_files():
    code = GATEWAY_JS.read_text()
    name_rule = re.search(r"^var CLIENT_NAME = /(.*)/;$", code, re.M)
    assert name_rule is not None and name_rule[1] == f"^{CLIENT_NAME.pattern}$"
    secret_rule = re.search(r"^var MIN_SECRET_BYTES = (\d+);", code, re.M)
    assert secret_rule is not None and int(secret_rule[1]) == MIN_JWT_SECRET_BYTES == 32


# --- JSON Web Tokens ---------------------------------------------------------------------------


def test_a_good_token_names_its_subject(tmp_path):
    now = int(time.time())
    gateway = Gateway(tmp_path, f"static={K64}\n")
    assert gateway.clients(
        [
            f"Bearer {token(claims(sub='reader-7'))}",
            f"Bearer {token(claims(sub='a.b_c-d@e:f+g', aud=['other', AUDIENCE]))}",
            f"Bearer {token(claims(exp=now + MAX_LIFETIME))}",  # the longest lifetime
            f"Bearer {token(claims(exp=now - 20))}",  # expired within the clock skew
            f"Bearer {token(claims(iat=time.time(), nbf=now + 20))}",  # nbf within the skew; iat any finite number
            f"Bearer {token(claims(iat=None))}",  # iat is optional
            f"Bearer {token(claims(sub='u' * 128))}",
            f"Bearer {K64}",
        ]
    ) == ["jwt:reader-7", "jwt:a.b_c-d@e:f+g"] + ["jwt:user-1"] * 4 + ["jwt:" + "u" * 128, "static"]


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_every_hostile_token_of_the_integration_tests_is_refused(tmp_path, case):
    gateway = Gateway(tmp_path, f"static={K64}\n")
    assert gateway.client(f"Bearer {REFUSED[case]()}") == ""


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("exp 1e400", lambda: token({}, raw=raw_claims(exp="1e400"))),
        ("exp -1e400", lambda: token({}, raw=raw_claims(exp="-1e400"))),
        ("exp 1e21 (an integer, far ahead)", lambda: token({}, raw=raw_claims(exp="1e21"))),
        ("exp a float", lambda: token({}, raw=raw_claims(exp=f"{int(time.time()) + 100}.5"))),
        ("exp true", lambda: token({}, raw=raw_claims(exp="true"))),
        ("exp a list", lambda: token(claims(exp=[int(time.time()) + 100]))),
        ("exp beyond the lifetime and the skew", lambda: token(claims(exp=int(time.time()) + MAX_LIFETIME + 31))),
        ("expired beyond the skew", lambda: token(claims(exp=int(time.time()) - 31))),
        ("nbf beyond the skew", lambda: token(claims(nbf=int(time.time()) + 60))),
        ("nbf null", lambda: token({}, raw=raw_claims(nbf="null"))),
        ("iat beyond the skew", lambda: token(claims(iat=int(time.time()) + 60))),
        ("iat -1e400", lambda: token({}, raw=raw_claims(iat="-1e400"))),
        ("iat null", lambda: token({}, raw=raw_claims(iat="null"))),
        ("aud an empty list", lambda: token(claims(aud=[]))),
        ("aud of another case", lambda: token(claims(aud=AUDIENCE.upper()))),
        ("iss with a trailing slash", lambda: token(claims(iss=ISSUER + "/"))),
        ("sub empty", lambda: token(claims(sub=""))),
        ("sub with a carriage return", lambda: token(claims(sub="user\r"))),
        ("sub with a slash", lambda: token(claims(sub="a/b"))),
        ("sub non-ASCII", lambda: token(claims(sub="usér"))),
        ("crit empty", lambda: token(claims(), header={"alg": "HS256", "crit": []})),
        ("crit null", lambda: token(claims(), header={"alg": "HS256", "crit": None})),
        ("no alg", lambda: token(claims(), header={"typ": "JWT"})),
        ("alg None (JSON null)", lambda: token(claims(), header={"alg": None})),
        ("ES256", lambda: token(claims(), header={"alg": "ES256"})),
        ("a signature cut short", lambda: token(claims())[:-1]),
        ("a signature with '+' (base64, not base64url)", lambda: token(claims())[:-2] + "+A"),
        ("claims padded", lambda: (lambda p: f"{p[0]}.{p[1]}==.{p[2]}")(token(claims()).split("."))),
        ("a header that is not JSON", lambda: token(claims()).replace("eyJ", "eyK", 1)),
        ("claims that are not JSON", lambda: token({}, raw="{not json")),
        ("claims null", lambda: token({}, raw="null")),
        ("a token of the secret with a newline", lambda: token(claims(), secret=SECRET + b"\n")),
    ],
)
def test_more_hostile_tokens_are_refused(tmp_path, case, make):
    gateway = Gateway(tmp_path, f"static={K64}\n")
    assert gateway.client(f"Bearer {make()}") == ""


def test_the_secret_file_is_trimmed_of_whitespace_and_read_as_bytes(tmp_path):
    """Taken as gateway/nginx.py's jwt_secret takes it: ASCII whitespace at either end out,
    any other byte in (a binary secret is a secret too)."""
    binary = bytes(range(256))
    gateway = Gateway(tmp_path, "", secret=b" \t\n" + binary[33:] + b"\r\n\x0b\x0c ")
    assert gateway.client(f"Bearer {token(claims(), secret=binary[33:])}") == "jwt:user-1"


@pytest.mark.parametrize("length", [0, 1, MIN_JWT_SECRET_BYTES - 1])
def test_a_short_secret_refuses_every_token(tmp_path, length):
    secret = b"s" * length
    gateway = Gateway(tmp_path, f"static={K64}\n", secret=b"  " + secret + b"\n")  # whitespace does not count
    answers = gateway.answers([f"Bearer {token(claims(), secret=secret)}", f"Bearer {token(claims())}"])
    assert [a["value"] for a in answers] == ["", ""]
    assert answers[0]["logs"] == [[LOG_CRIT, "the JWT secret is shorter than 32 bytes: every token is refused"]]
    assert gateway.bearer(K64) == "static"  # static keys need no secret
    secret = b"s" * MIN_JWT_SECRET_BYTES
    gateway = Gateway(tmp_path, "", secret=secret)
    assert gateway.client(f"Bearer {token(claims(), secret=secret)}") == "jwt:user-1"


def test_a_missing_secret_file_refuses_every_token(tmp_path):
    gateway = Gateway(tmp_path, "")
    (tmp_path / "jwt-secret").unlink()
    answers = gateway.answers([f"Bearer {token(claims())}"])
    assert answers[0]["value"] == "" and answers[0]["logs"][0][0] == LOG_CRIT


@pytest.mark.parametrize(
    "variables",
    [
        {"jwt_audience": ""},
        {"jwt_issuer": ""},
        {"jwt_max_lifetime": ""},
        {"jwt_max_lifetime": "0"},
        {"jwt_max_lifetime": "-5"},
        {"jwt_max_lifetime": "1.5"},
        {"jwt_max_lifetime": "nan"},
    ],
    ids=lambda v: ",".join(f"{k}={val!r}" for k, val in v.items()),
)
def test_without_an_audience_an_issuer_or_a_lifetime_no_token_is_taken(tmp_path, variables):
    """gateway/nginx.py refuses to start so; should a config say so anyway, gateway.js takes
    no token rather than one of any audience, issuer or lifetime."""
    gateway = Gateway(tmp_path, "", **variables)
    # a token naming what the config names, empty or not
    good = token(claims(aud=variables.get("jwt_audience", AUDIENCE), iss=variables.get("jwt_issuer", ISSUER)))
    assert gateway.clients([f"Bearer {good}", f"Bearer {token(claims())}"]) == ["", ""]


def test_without_a_secret_file_no_token_is_taken(tmp_path):
    gateway = Gateway(tmp_path, f"static={K64}\n", secret=None)
    assert gateway.clients([f"Bearer {token(claims())}", f"Bearer {K64}"]) == ["", "static"]


def test_python_refuses_at_start_what_gateway_js_would_ignore(tmp_path):
    """gateway/nginx.py: a client table or file with a line gateway.js would ignore does not
    start; the message names the line or the client, never a key."""
    from gateway.nginx import check_clients, read_clients_file

    with pytest.raises(ValueError, match="same key") as refused:
        check_clients({"eve": K64, "frank": K64})
    assert K64 not in str(refused.value)
    with pytest.raises(ValueError, match="client name"):
        check_clients({"jwt:alice": K64})
    assert check_clients({"alice": K64, "bob": K16}) == {"alice": K64, "bob": K16}
    clients_file = tmp_path / "clients"
    clients_file.write_text(f"alice={K64}\nshort=abc\neve={K16}\nfrank={K16}\n")
    with pytest.raises(ValueError, match=r"line 2: a key .*; line 3: a key that .*; line 4: a key that") as refused:
        read_clients_file(clients_file)
    assert not any(text in str(refused.value) for text in (K64, K16, "abc"))
    clients_file.write_text(f"# clients\nalice={K64}\nalice={K16}\n bob = {K64[::-1]}\r\n")
    assert read_clients_file(clients_file) == {"alice": K16, "bob": K64[::-1]}


# --- the node's key, and requests while a node's key rotates -----------------------------


@pytest.mark.parametrize(
    "content, key",
    [
        ('{"inference": {"key": "AbC-12_x"}}', "AbC-12_x"),
        ('{"inference": {"key": "' + "k" * 512 + '"}}', "k" * 512),
        ('{"inference": {"key": "' + "k" * 513 + '"}}', ""),
        ('{"inference": {"key": "a b"}}', ""),
        ('{"inference": {"key": "a\\r\\nX-Evil: 1"}}', ""),  # a header injected through the key
        ('{"inference": {"key": ""}}', ""),
        ('{"inference": {"key": 12345}}', ""),
        ('{"inference": {}}', ""),
        ('{"management": {"key": "abc"}}', ""),
        ('{"inference": {"key": "abc"', ""),  # half written
        ("", ""),
        (None, ""),  # no key file yet
    ],
)
def test_the_node_key_is_taken_only_when_whole_and_plain(tmp_path, content, key):
    if content is not None:
        (tmp_path / "key_file.json").write_text(content)
    variables = {"node_dir": str(tmp_path), "key_file": "key_file.json"}
    assert run_njs([{"fn": "nodeKey", "variables": variables, "headers": {}}], tmp_path)[0]["value"] == key


MAX_AGE_S = 40  # a lock's life in these tests (the config passes common/keys.py's)


def lock_cases(now_s: float) -> list[tuple[str, str | None, float | None]]:
    """(name, the lock's content or None for no lock, its mtime or None for now)."""
    old, ahead = now_s - 2 * MAX_AGE_S, now_s + 2 * MAX_AGE_S
    return [
        ("no lock", None, None),
        ("taken now", json.dumps({"taken_ms": int(now_s * 1000)}), None),
        ("taken just within its life", json.dumps({"taken_ms": int((now_s - MAX_AGE_S + 5) * 1000)}), None),
        ("taken long ago, written now", json.dumps({"taken_ms": int(old * 1000)}), None),
        ("taken far ahead (a clock set back)", json.dumps({"taken_ms": int(ahead * 1000)}), None),
        ("no time in it, written now", "{}", None),
        ("not JSON, written now", "held", None),
        ("not JSON, written long ago", "held", old),
        ("a time that is not a number, written long ago", json.dumps({"taken_ms": "now"}), old),
        ("a time of true, written now", json.dumps({"taken_ms": True}), None),
        ("a list, written long ago", "[1, 2]", old),
    ]


def write_lock(path: Path, content: str | None, mtime: float | None) -> None:
    path.unlink(missing_ok=True)
    if content is not None:
        path.write_text(content)
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def test_a_lock_is_held_alike_in_python_and_njs(tmp_path, monkeypatch):
    """gateway.js's lockHeld and common/keys.py's lock_is_fresh, over the same files: the
    poller (which stops polling a rotating node) and the guard (which waits for it before
    sending a request again) agree on whether a rotation holds a node."""
    from common import keys

    monkeypatch.setattr(keys, "LOCK_MAX_AGE_S", MAX_AGE_S)
    cases = lock_cases(time.time())
    calls, verdicts = [], []
    for index, (_, content, mtime) in enumerate(cases):
        lock = tmp_path / f"lock{index}"
        write_lock(lock, content, mtime)
        verdicts.append(keys.lock_is_fresh(lock))
        calls.append({"fn": "lockHeld", "args": [str(lock), MAX_AGE_S * 1000]})
    held = [result["value"] for result in run_njs(calls, tmp_path)]
    assert held == verdicts, [(c[0], h, v) for c, h, v in zip(cases, held, verdicts, strict=True) if h != v]
    expected = dict(zip([c[0] for c in cases], verdicts, strict=True))
    assert expected["taken now"] and expected["not JSON, written now"] and expected["a time of true, written now"]
    assert not expected["no lock"] and not expected["taken long ago, written now"]
    assert not expected["taken far ahead (a clock set back)"] and not expected["not JSON, written long ago"]


KEY_REFUSED = {"status": 400, "body": json.dumps({"code": 400, "type": "InvalidKeyException", "message": "..."})}
ANSWERED = {"status": 200, "body": json.dumps({"label": "positive", "score": 0.99})}
# the handler's own refusal: a 400 too, with its message, never sent again
BAD_INPUT = {"status": 400, "body": json.dumps({"code": 400, "type": "InvalidInput", "message": "no text"})}


SENT_KEY, NEW_KEY = "key-refused-0", "key-after-the-switch-1"


def key_file(key: str) -> str:
    return json.dumps({"inference": {"key": key}})


def rotating(
    tmp_path: Path,
    lock: str | None,
    replies: list[dict[str, Any]],
    remove_after: int | None = None,
    max_age_ms: int = 1000,
    key_file_text: str = key_file(SENT_KEY),
    new_key_after: int | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """A request during a rotation, sent with SENT_KEY while the key file holds
    `key_file_text` (NEW_KEY's file from poll `new_key_after`), its subrequests answered
    `replies` in turn: the polls before each send, and what the client was answered."""
    write_lock(tmp_path / "key_rotation.lock", lock, None)
    (tmp_path / "key_file.json").write_text(key_file_text)
    variables = {
        "node_dir": str(tmp_path),
        "key_file": "key_file.json",
        "node_key": SENT_KEY,
        "rotation_lock": "key_rotation.lock",
        "rotation_lock_max_age_ms": str(max_age_ms),
        "args": "request_id=r-1",
    }
    call = {
        "fn": "rotating",
        "variables": variables,
        "path": "/predictions/sentiment",
        "replies": replies,
        "remove_after": remove_after,
        "new_key_after": new_key_after,
        "new_key": key_file(NEW_KEY),
    }
    result: dict[str, Any] = run_njs([call], tmp_path)[0]["value"]
    # each send goes on as the request came: to its path, with its method and request ID; a
    # resend through the location whose key variable was not read yet (nginx.py's /_resend)
    assert [(s["uri"], s["args"], s["method"]) for s in result["sent"]] == [
        (where + "/predictions/sentiment", "request_id=r-1", "POST") for where in ("/_send", "/_resend")
    ][: len(result["sent"])]
    answered = result["answered"]
    expected = {"Content-Type": "application/json", **({"Retry-After": "1"} if "retry_after" in replies[-1] else {})}
    assert answered["headers"] == expected  # the type and the handler's Retry-After, nothing else
    return [s["polls"] for s in result["sent"]], answered


def taken(ms_ago: int = 0) -> str:
    return json.dumps({"taken_ms": int(time.time() * 1000) - ms_ago})


@pytest.mark.parametrize(
    "reply", [ANSWERED, BAD_INPUT, {"status": 503, "body": "{}", "retry_after": "1"}, {"status": 400, "body": "x"}]
)
def test_while_the_lock_is_held_a_request_goes_on_at_once_and_its_answer_back(tmp_path, reply):
    """Nothing is held: the request is sent at once, and any answer but TorchServe's refusal
    of its key (the handler's 400 with its message, a full queue's 503, a body that is not
    JSON) comes back as it is, the request sent once."""
    polls, answered = rotating(tmp_path, taken(), [reply], remove_after=7)
    assert polls == [0]
    assert (answered["status"], answered["body"]) == (reply["status"], reply["body"])


def test_a_request_refused_for_its_key_is_sent_again_when_the_lock_goes(tmp_path):
    """The key file still names the refused key (TorchServe has not written it yet)."""
    polls, answered = rotating(tmp_path, taken(), [KEY_REFUSED, ANSWERED], remove_after=7)
    assert polls == [0, 7]
    assert (answered["status"], answered["body"]) == (200, ANSWERED["body"])


@pytest.mark.parametrize("meanwhile", [key_file(SENT_KEY), "", '{"inference": {"ke'])
def test_a_refused_request_is_sent_again_once_the_file_holds_another_key_lock_or_not(tmp_path, meanwhile):
    """The file holds the refused key, nothing, or half a file (TorchServe rewriting it)
    until poll 4, then the new key; the lock stays (a second rotation took it, as the
    supervisor's management rotation follows its inference one): sent again at poll 4."""
    polls, answered = rotating(tmp_path, taken(), [KEY_REFUSED, ANSWERED], key_file_text=meanwhile, new_key_after=4)
    assert polls == [0, 4] and answered["status"] == 200


def test_a_request_refused_twice_is_answered_the_refusal(tmp_path):
    """Sent again once only: a key refused after the lock went is not the switch's."""
    polls, answered = rotating(tmp_path, taken(), [KEY_REFUSED, KEY_REFUSED], remove_after=3)
    assert polls == [0, 3]
    assert (answered["status"], answered["body"]) == (400, KEY_REFUSED["body"])


def test_no_request_waits_longer_than_a_locks_life(tmp_path):
    """A lock never removed (its rotation hung): a refused request is sent again after the
    lock's life at most, max_age / the poll period polls, with whatever key is there."""
    poll_ms = int(re.search(r"var LOCK_POLL_MS = (\d+);", GATEWAY_JS.read_text())[1])
    polls, answered = rotating(tmp_path, taken(), [KEY_REFUSED, ANSWERED], max_age_ms=500)
    assert polls == [0, 500 // poll_ms] and answered["status"] == 200


@pytest.mark.parametrize("ms_ago", [5_000, -5_000])
def test_a_stale_lock_is_not_waited_for(tmp_path, ms_ago):
    """A lock left by a killed rotation (or written by a clock far off: stamped in the
    future): a refused request is sent again at once. Stamped as the test runs: a stamp
    made when the tests were collected was, in a random order, anywhere from 5 s ahead to a
    minute behind by then."""
    polls, _ = rotating(tmp_path, taken(ms_ago=ms_ago), [KEY_REFUSED, ANSWERED], max_age_ms=1000)
    assert polls == [0, 0]


@pytest.mark.parametrize("lock", [None, "taken"])
def test_without_a_lock_or_a_configured_life_nothing_waits(tmp_path, lock):
    """The lock gone by the time the refusal comes back, or no cap configured: sent again at once."""
    polls, _ = rotating(tmp_path, taken() if lock else None, [KEY_REFUSED, ANSWERED], max_age_ms=0 if lock else 1000)
    assert polls == [0, 0]


def test_a_lock_taken_as_a_rotation_takes_it_is_waited_for_up_to_the_configured_cap(tmp_path):
    """The lock common/keys.py's take_lock writes and the cap gateway/nginx.py renders
    (LOCK_MAX_AGE_S): a refused request waits for the removal, or the cap when none comes."""
    from common.keys import LOCK_MAX_AGE_S, take_lock

    cap_ms = round(LOCK_MAX_AGE_S * 1000)
    poll_ms = int(re.search(r"var LOCK_POLL_MS = (\d+);", GATEWAY_JS.read_text())[1])
    for remove_after, waited in ((5, 5), (None, cap_ms // poll_ms)):
        take_lock(tmp_path)
        lock = (tmp_path / "key_rotation.lock").read_text()
        polls, answered = rotating(tmp_path, lock, [KEY_REFUSED, ANSWERED], remove_after, max_age_ms=cap_ms)
        assert polls == [0, waited] and answered["status"] == 200
