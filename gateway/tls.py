"""TLS on the gateway's client port: a certificate (chain) and its private key from two
files, as cert-manager writes a Secret (tls.crt, tls.key) and Kubernetes mounts it (each
update a new directory behind a `..data` symlink swapped in one step).

nginx reads the pair when it (re)loads its config; the gateway's runner
(gateway/__main__.py) watches the files' contents and, once a new pair is complete and
its key matches its certificate, reloads nginx gracefully. A pair that is half written,
unreadable or mismatched is never loaded: the one served stays, and that is logged (the
file and the reason, never a key's text).

Standard library only: Python's ssl module (OpenSSL's own parser) checks the pair."""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# TLS 1.0 and 1.1 are refused (RFC 8996); TLS 1.2 with forward-secret AEAD suites only
# (Mozilla's "intermediate" list without DHE, which needs parameters of its own); TLS 1.3's
# suites are OpenSSL's defaults, all of them AEAD.
PROTOCOLS = "TLSv1.2 TLSv1.3"
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


class TlsFileError(ValueError):
    """A certificate or key file the gateway cannot serve: the message names the file and
    the reason, never the file's text."""


def _no_password() -> str:
    # an encrypted key: never a prompt on the terminal (nginx could not open it either)
    raise TlsFileError("the private key is encrypted: the gateway takes an unencrypted PEM key")


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TlsFileError(f"the TLS {what} file {path} cannot be read: {e.strerror or type(e).__name__}") from None


def contents_digest(cert_pem: bytes, key_pem: bytes) -> str:
    """One digest of both files' contents: what tells one reading of the pair from another."""
    return hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest()


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the first certificate of a PEM chain (the server's own), hex: what logs
    name a certificate by."""
    text = cert_pem.decode("ascii", "replace")
    start = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise TlsFileError("no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(text[start : end + len("-----END CERTIFICATE-----")])
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class TlsPair:
    """One reading of the pair: the files as they resolve now (a Kubernetes Secret's
    `..data` link followed to the update's own directory, which is never written again)
    and a digest of both contents."""

    cert_file: Path
    key_file: Path
    digest: str
    fingerprint: str  # the server certificate's SHA-256


def read_pair(cert_file: Path, key_file: Path) -> TlsPair:
    """The pair as it is now, checked: both readable, the certificate PEM, the key its
    certificate's, unencrypted. TlsFileError naming the file and what is wrong otherwise.
    The files are read again after the check: a pair that changed meanwhile is reported as
    changing (read it again later), never taken half old and half new."""
    cert, key = Path(os.path.realpath(cert_file)), Path(os.path.realpath(key_file))
    cert_pem = _read(cert, "certificate")
    before = contents_digest(cert_pem, _read(key, "key"))
    try:
        served = fingerprint(cert_pem)
    except (TlsFileError, ValueError):
        raise TlsFileError(f"the TLS certificate file {cert_file} holds no PEM certificate") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except TlsFileError as e:
        raise TlsFileError(f"the TLS key file {key_file}: {e}") from None
    except ssl.SSLError as e:  # OpenSSL's reason (KEY_VALUES_MISMATCH, NO_START_LINE...): no key text
        raise TlsFileError(
            f"the TLS certificate {cert_file} and key {key_file} are not a pair nginx can serve: "
            f"{e.reason or e.__class__.__name__}"
        ) from None
    except OSError as e:
        raise TlsFileError(f"the TLS files {cert_file}, {key_file} cannot be read: {e.strerror}") from None
    after = contents_digest(_read(cert, "certificate"), _read(key, "key"))
    if after != before:
        raise TlsFileError(f"the TLS files {cert_file}, {key_file} changed while they were read")
    return TlsPair(cert, key, before, served)


def world_readable(path: Path) -> bool:
    return bool(os.stat(path).st_mode & 0o004)


@dataclass(frozen=True)
class TlsSettings:
    """The certificate (chain, PEM) and private key (PEM, unencrypted) files the client
    port serves TLS with. Checked when made: TlsFileError (a ValueError) naming the file
    and the reason when either cannot be read or they are not a pair."""

    cert_file: Path
    key_file: Path
    # a TLS handshake must end within this many seconds (the client's header timeout's share)
    handshake_timeout_s: int = 10

    def __post_init__(self) -> None:
        read_pair(self.cert_file, self.key_file)


class CertificateWatch:
    """Tells when a new pair is there to load: check() reads the files (cheap: two small
    files) and returns the new pair once their contents differ from the pair loaded and it
    is valid. A pair that is not valid yet (half written, its key not yet its
    certificate's) is logged once per content and not loaded; the pair loaded stays."""

    def __init__(self, settings: TlsSettings, log: Callable[[str], None]) -> None:
        self.settings, self.log = settings, log
        first = read_pair(settings.cert_file, settings.key_file)
        self.loaded, self.fingerprint = first.digest, first.fingerprint
        self._refused: str | None = None  # the contents last refused, logged once

    def _contents(self) -> str | None:
        try:
            cert, key = Path(self.settings.cert_file).read_bytes(), Path(self.settings.key_file).read_bytes()
        except OSError:
            return None
        return contents_digest(cert, key)

    def check(self) -> TlsPair | None:
        """The new valid pair to load, or None (the same pair, or one not valid)."""
        now = self._contents()
        if now == self.loaded:
            return None
        try:
            pair = read_pair(self.settings.cert_file, self.settings.key_file)
        except TlsFileError as e:
            if now != self._refused:
                self.log(f"TLS: a new certificate or key that cannot be served yet, still serving the old one: {e}")
                self._refused = now
            return None
        self._refused = None
        return pair
