"""TLS for nats-server: a demo CA and server certificate (or the operator's own), and the includes.

nats.conf includes tls.conf (clients) and leafnode-tls.conf (leaf nodes) from its
directory; both are empty without TLS. `hvmesh up --tls` makes a CA and a server
certificate for the names it listens on under <data-dir>/tls, once, with the
`cryptography` package; the services and the CLI check the server against the CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hvmesh.core import log

LOG = log.get_logger(__name__)

CLIENT_FILE = "tls.conf"
LEAF_FILE = "leafnode-tls.conf"
DEMO_DIR = "tls"
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity clients accept for a server certificate


class TlsError(ValueError):
    """Certificates that cannot be used as given (missing, unreadable, not a pair)."""


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key, and the CA clients check it against (PEM files)."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def given(cls, cert: str, key: str, ca: str) -> TlsFiles:
        """The operator's own files: all three, each readable."""
        if not (cert and key and ca):
            raise TlsError(
                "TLS with your own certificates needs --tls-cert, --tls-key and --tls-ca"
            )
        files = cls(Path(cert).expanduser(), Path(key).expanduser(), Path(ca).expanduser())
        for what, path in (("certificate", files.cert), ("key", files.key), ("CA", files.ca)):
            if not path.is_file():
                raise TlsError(f"TLS {what} {path}: no such file")
        return files.absolute()

    def absolute(self) -> TlsFiles:
        return TlsFiles(self.cert.absolute(), self.key.absolute(), self.ca.absolute())


def _names(hosts: Sequence[str]) -> list[str]:
    """The names the server certificate is for: localhost, loopback, this host, `hosts`."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *hosts]
    return [
        n for i, n in enumerate(names) if n and n not in names[:i] and n not in ("0.0.0.0", "::")
    ]


def demo_certificates(directory: Path, hosts: Sequence[str] = ()) -> TlsFiles:
    """A demo CA and a server certificate it signs, made once under `directory`.

    Kept as they are on later runs (clients trust the CA file they were given), unless
    a file is missing or the server certificate does not cover `hosts`.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = TlsFiles(directory / "server.pem", directory / "server-key.pem", directory / "ca.pem")
    names = _names(hosts)
    if all(p.is_file() for p in (files.cert, files.key, files.ca)):
        have = x509.load_pem_x509_certificate(files.cert.read_bytes())
        sans = have.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        covered = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
        covered |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        expires = have.not_valid_after_utc
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
        if set(names) <= covered and expires > soon:
            return files.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key_path = directory / "ca-key.pem"
    if files.ca.is_file() and ca_key_path.is_file():
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{ca_key_path}: not an EC key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hvmesh demo CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, _key_pem(ca_key), 0o600)
        _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.key, _key_pem(key), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    LOG.info("tls.demo_certificates", directory=str(directory), names=names)
    return files.absolute()


def _key_pem(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _block(files: TlsFiles) -> str:
    return (
        "tls {\n"
        f"  cert_file: {_quote(files.cert)}\n"
        f"  key_file: {_quote(files.key)}\n"
        f"  ca_file: {_quote(files.ca)}\n"
        "  timeout: 5\n"
        "}\n"
    )


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_includes(conf_dir: Path, files: TlsFiles | None) -> None:
    """tls.conf and leafnode-tls.conf in `conf_dir`: TLS blocks with `files`, else none."""
    header = "# Written by hvmesh (`hvmesh up --tls`): edits here are overwritten.\n"
    body = _block(files) if files else "# No TLS.\n"
    for name in (CLIENT_FILE, LEAF_FILE):
        (conf_dir / name).write_text(header + body, encoding="utf-8")
