"""TLS on the gateway's client port, against the real nginx with real `openssl s_client`
and curl, in front of a fake node (a small HTTP server answering predictions: TLS is the
gateway's alone, no TorchServe needed).

TLS 1.2 and 1.3 are served, 1.0 and 1.1 refused; plain HTTP to the port gets no answer;
https with the CA verifies; and the renewal: the certificate and key replaced as
Kubernetes replaces a mounted Secret (a new directory, the `..data` link swapped) while
clients send requests on new and keep-alive connections: not one fails, and the new
certificate is served. A half-written or mismatched pair is never loaded."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from common.net import free_port, wait_for_port
from common.paths import ROOT
from common.torchserve_files import KEY_FILE
from gateway.nginx import Gateway, GatewaySettings, Node
from gateway.tls import TlsSettings
from helpers import poll

pytestmark = pytest.mark.timeout(300)

CLIENT_KEY = "tls-client-key-0123456789abcdef"
CLIENTS = {"tls": CLIENT_KEY}
NODE_KEY = "fake-node-key-0123"
ANSWER = b'{"label": "positive", "score": 0.9}'
OPENSSL = shutil.which("openssl") or "openssl"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Certificates:
    """A CA of its own and server certificates it signs for 127.0.0.1 and localhost, each
    with the serial asked for (EC P-256: quick to make)."""

    def __init__(self, directory: Path):
        self.dir, self.made = directory, 0
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_key, self.ca = directory / "ca.key", directory / "ca.crt"
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(self.ca_key), cwd=directory)
        openssl(
            "req", "-x509", "-new", "-key", str(self.ca_key), "-out", str(self.ca),
            "-days", "2", "-subj", "/CN=sentiment test CA", cwd=directory,
        )  # fmt: skip

    def server(self, serial: int) -> tuple[bytes, bytes]:
        """(certificate, key) PEM of a new server certificate of this serial."""
        self.made += 1
        out = self.dir / f"server-{self.made}"
        out.mkdir()
        key, csr, cert, ext = out / "tls.key", out / "tls.csr", out / "tls.crt", out / "ext.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=out)
        openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", "/CN=localhost", cwd=out)
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
            "-set_serial", str(serial), "-days", "1", "-extfile", str(ext), "-out", str(cert), cwd=out,
        )  # fmt: skip
        return cert.read_bytes(), key.read_bytes()


class SecretVolume:
    """A directory as the kubelet keeps a mounted Secret: each update a directory of its
    own (`..<timestamp>`), `..data` a link to the current one, swapped by a rename, and
    each key a link through `..data`; the old directory removed after the swap."""

    def __init__(self, directory: Path, files: dict[str, bytes]):
        self.dir, self.updates = directory, 0
        directory.mkdir(parents=True)
        self.update(files)
        for name in files:
            (directory / name).symlink_to(Path("..data") / name)

    def update(self, files: dict[str, bytes]) -> None:
        self.updates += 1
        new = self.dir / f"..update_{self.updates}"
        new.mkdir(mode=0o750)
        for name, data in files.items():
            fd = os.open(new / name, os.O_WRONLY | os.O_CREAT, 0o400 if name.endswith(".key") else 0o444)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        link = self.dir / "..data"
        old = os.readlink(link) if link.is_symlink() else None
        tmp = self.dir / "..data_tmp"
        tmp.symlink_to(new.name)
        os.replace(tmp, link)
        if old is not None:
            shutil.rmtree(self.dir / old)

    @property
    def cert(self) -> Path:
        return self.dir / "tls.crt"

    @property
    def key(self) -> Path:
        return self.dir / "tls.key"


class FakeNode:
    """A node directory (config.properties, key_file.json) and a small HTTP/1.1 server on a
    free port answering POST /predictions/sentiment with the node's key, keep-alive."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._answer(200, b'{"status": "Healthy"}')

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {NODE_KEY}":
                    self._answer(401, b"{}")
                else:
                    self._answer(200, ANSWER)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # the listen backlog: 5 by default, short of a load's connections

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        (directory / "config.properties").write_text(f"inference_address=http://127.0.0.1:{self.port}\n")
        (directory / KEY_FILE).write_text(json.dumps({"inference": {"key": NODE_KEY}}))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    fake = FakeNode(tmp_path_factory.mktemp("fake") / "node")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(certificates, node, tmp_path_factory):
    """The gateway with TLS, its pair in a Secret-like volume, run as a Gateway object."""
    tmp = tmp_path_factory.mktemp("tls-gateway")
    cert, key = certificates.server(1)
    volume = SecretVolume(tmp / "secret", {"tls.crt": cert, "tls.key": key, "ca.crt": certificates.ca.read_bytes()})
    settings = GatewaySettings(free_port(), CLIENTS, tls=TlsSettings(volume.cert, volume.key))
    gw = Gateway(tmp / "gateway", settings).start([Node.from_dir(node.directory)])
    yield gw
    gw.stop()


def s_client(port: int, *options: str, ca: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), "-verify_return_error", *options],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_tls_1_2_and_1_3_are_served_with_a_certificate_the_ca_verifies(gateway, certificates, version):
    done = s_client(gateway.settings.port, version, "-servername", "localhost", ca=certificates.ca)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    protocol = {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[version]
    assert f"Protocol  : {protocol}" in done.stdout or f"New, {protocol}," in done.stdout, done.stdout
    assert "Verify return code: 0 (ok)" in done.stdout


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_are_refused_by_the_server(gateway, certificates, version):
    """The client side allows them (security level 0: OpenSSL 3 refuses them on its own
    otherwise), so the refusal is the gateway's."""
    done = s_client(gateway.settings.port, version, "-cipher", "DEFAULT@SECLEVEL=0", ca=certificates.ca)
    assert done.returncode != 0, done.stdout
    assert "Cipher is (NONE)" in done.stdout or "alert protocol version" in done.stderr, done.stdout + done.stderr


def test_plain_http_to_the_tls_port_gets_no_answer(gateway):
    """Refused, not redirected: by the time a redirect could answer, the key was sent in clear."""
    with socket.create_connection(("127.0.0.1", gateway.settings.port), timeout=15) as sock:
        sock.sendall(
            b"POST /predictions/sentiment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + CLIENT_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/" not in received and b"positive" not in received, received[:200]


def test_https_with_the_ca_is_answered_and_the_gateway_url_says_https(gateway, certificates):
    assert gateway.url().startswith("https://")
    curl = shutil.which("curl") or "curl"
    done = subprocess.run(
        [
            curl, "-sS", "--cacert", str(certificates.ca), "-H", f"Authorization: Bearer {CLIENT_KEY}",
            "-H", "Content-Type: application/json", "--data", '{"text": "I love this"}',
            "-w", "\n%{http_code} %{ssl_verify_result}", gateway.url("/predictions/sentiment"),
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200 0" and json.loads(body) == json.loads(ANSWER), done.stdout
    # without the CA, curl refuses the certificate: it is the CA's, not one any client takes
    refused = subprocess.run([curl, "-sS", gateway.url("/healthz")], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 60, refused.stderr  # SSL certificate problem
    # the probes' routes are there over TLS as before (the kubelet's HTTPS probes)
    assert requests.get(gateway.url("/readyz"), verify=certificates.ca, timeout=10).status_code == 200


def served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            serial = (tls.getpeercert() or {})["serialNumber"]
            assert isinstance(serial, str)
            return int(serial, 16)


class Load:
    """Clients sending predictions over https until stopped: some on keep-alive
    connections (a session each), some on a new connection per request. Every answer
    that is not the prediction, and every error, is a failure."""

    def __init__(self, url: str, ca: Path, keep_alive: int = 3, fresh: int = 2):
        self.url, self.ca, self.stop = url, ca, threading.Event()
        self.ok, self.failed = 0, []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(True,)) for _ in range(keep_alive)]
        self.threads += [threading.Thread(target=self._run, args=(False,)) for _ in range(fresh)]

    def _run(self, keep_alive: bool) -> None:
        session = requests.Session() if keep_alive else None
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        while not self.stop.is_set():
            try:
                post = session.post if session is not None else requests.post
                r = post(self.url, json={"text": "I love this"}, headers=headers, verify=str(self.ca), timeout=30)
                result: tuple[object, ...] | None = (
                    None if r.status_code == 200 and r.content == ANSWER else (r.status_code, r.text[:100])
                )
            except requests.RequestException as e:
                result = ("error", "keep-alive" if keep_alive else "new connection", f"{type(e).__name__}: {e}"[:200])
            with self._lock:
                if result is None:
                    self.ok += 1
                else:
                    self.failed.append(result)
        if session is not None:
            session.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def count(self) -> int:
        with self._lock:
            return self.ok


def wait_for_more(load: Load, more: int = 50) -> None:
    start = load.count()
    poll(load.count, lambda n: n >= start + more, timeout=60)


@pytest.fixture
def runner(certificates, node, tmp_path):
    """`python -m gateway` itself (its certificate watch is the runner's) with TLS from a
    Secret-like volume, on a free port; stopped by its pid."""
    cert, key = certificates.server(100)
    volume = SecretVolume(tmp_path / "secret", {"tls.crt": cert, "tls.key": key})
    port = free_port()
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gateway", "--node", str(node.directory), "--client", f"tls={CLIENT_KEY}",
            "--port", str(port), "--workdir", str(tmp_path / "gateway"),
            "--tls-cert-file", str(volume.cert), "--tls-key-file", str(volume.key),
            "--rate", "10000", "--burst", "10000",
        ],
        cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    log.close()

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / "gateway.log").read_text()[-3000:])

    try:
        wait_for_port("127.0.0.1", port, 60, alive)
        yield port, volume, proc, tmp_path / "gateway.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def runner_events(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    return [json.loads(line)["message"] for line in lines if line.startswith("{") and '"source": "gateway"' in line]


def test_a_renewed_certificate_is_served_with_no_request_lost(runner, certificates):
    port, volume, _, log = runner
    url = f"https://127.0.0.1:{port}/predictions/sentiment"
    assert served_serial(port, certificates.ca) == 100
    with Load(url, certificates.ca) as load:
        wait_for_more(load)
        for serial in (101, 102, 103):
            cert, key = certificates.server(serial)
            volume.update({"tls.crt": cert, "tls.key": key})
            served = poll(lambda: served_serial(port, certificates.ca), lambda s, n=serial: s == n, timeout=60)
            assert served == serial
            wait_for_more(load)
    print(f"{load.ok} answered, {len(load.failed)} failed")
    assert load.failed == [], load.failed[:5]
    assert load.ok > 0
    assert sum("TLS: nginx reloaded" in m for m in runner_events(log)) == 3


def test_a_half_written_or_mismatched_pair_is_not_loaded(runner, certificates):
    """A certificate whose key is another's, then a key cut short: each logged once (no key
    text), the old pair served throughout; the good pair after them is loaded."""
    port, volume, _, log = runner
    new_cert, new_key = certificates.server(200)
    other_cert, other_key = certificates.server(201)
    volume.update({"tls.crt": new_cert, "tls.key": other_key})
    poll(lambda: runner_events(log), lambda m: any("cannot be served yet" in e for e in m), timeout=30)
    volume.update({"tls.crt": new_cert, "tls.key": new_key[: len(new_key) // 2]})
    messages = poll(lambda: runner_events(log), lambda m: sum("cannot be served yet" in e for e in m) >= 2, timeout=30)
    refused = [m for m in messages if "cannot be served yet" in m]
    assert len(refused) == 2, messages
    text = log.read_text()
    for key in (new_key, other_key):
        body = b"".join(line for line in key.splitlines() if not line.startswith(b"-----"))
        assert body[:40].decode() not in text
    assert served_serial(port, certificates.ca) == 100
    assert requests.get(f"https://127.0.0.1:{port}/healthz", verify=str(certificates.ca), timeout=10).ok
    volume.update({"tls.crt": new_cert, "tls.key": new_key})
    assert poll(lambda: served_serial(port, certificates.ca), lambda s: s == 200, timeout=60) == 200


@pytest.mark.parametrize("problem", ["one_flag", "missing", "mismatched", "not_pem"])
def test_the_runner_refuses_to_start_with_files_it_cannot_serve(certificates, node, tmp_path, problem):
    cert, key = certificates.server(300 + ["one_flag", "missing", "mismatched", "not_pem"].index(problem))
    _, other_key = certificates.server(310 + ["one_flag", "missing", "mismatched", "not_pem"].index(problem))
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes({"mismatched": other_key}.get(problem, key))
    if problem == "not_pem":
        (tmp_path / "tls.crt").write_text("not a certificate\n")
    flags = ["--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key")]
    if problem == "one_flag":
        flags = flags[:2]
    if problem == "missing":
        flags[3] = str(tmp_path / "absent.key")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--node", str(node.directory), "--client", f"tls={CLIENT_KEY}",
         "--port", str(free_port()), "--workdir", str(tmp_path / "gateway"), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    expected = {
        "one_flag": "--tls-cert-file and --tls-key-file go together",
        "missing": f"{tmp_path / 'absent.key'} cannot be read",
        "mismatched": "are not a pair",
        "not_pem": "holds no PEM certificate",
    }[problem]
    assert expected in done.stderr, done.stderr
    body = b"".join(line for line in key.splitlines() if not line.startswith(b"-----"))
    assert body[:40].decode() not in done.stderr
