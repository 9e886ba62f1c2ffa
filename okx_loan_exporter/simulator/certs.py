"""A throwaway certificate authority and a server certificate for the simulator's HTTPS.

Used by the tests and the benchmarks, which need the ``cryptography`` package (the ``[test]``
extra; the exporter itself does not). The simulator only reads the PEM files it is given
(``--tls.cert-file``/``--tls.key-file``), so any other tool may make them instead.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VALIDITY = datetime.timedelta(days=2)
HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class CertificateFiles:
    """PEM files: the CA certificate (what the exporter trusts), and the server's chain and key."""

    ca_file: str
    cert_file: str
    """The server certificate followed by the CA's, so it also serves as a CA file."""
    key_file: str


def issue_certificate(
    subject: str,
    issuer_key: Any | None,
    issuer: Any | None,
    *,
    ca: bool = False,
    server: bool = False,
    hosts: tuple[str, ...] = HOSTS,
) -> tuple[Any, Any]:
    """A certificate and its new ECDSA P-256 key, valid two days: a CA (self-signed when
    ``issuer`` is None), or signed by ``issuer`` for a server (for ``hosts``) or a client.

    The values are ``cryptography`` objects (``x509.Certificate``, ``EllipticCurvePrivateKey``).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer.subject if issuer else name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        if issuer is None:
            raise ValueError("only a CA certificate can be self-signed")
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def write_test_certificates(directory: str | os.PathLike[str]) -> CertificateFiles:
    """Make a CA and a server certificate for :data:`HOSTS` in ``directory``; the key file is
    written with mode 0600."""
    from cryptography.hazmat.primitives import serialization

    ca, ca_key = issue_certificate("okx-loan-exporter test CA", None, None, ca=True)
    server, key = issue_certificate(HOSTS[0], ca_key, ca, server=True)
    folder = Path(directory)
    files = CertificateFiles(
        ca_file=str(folder / "ca.pem"),
        cert_file=str(folder / "server.pem"),
        key_file=str(folder / "server-key.pem"),
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    Path(files.ca_file).write_bytes(ca_pem)
    Path(files.cert_file).write_bytes(server.public_bytes(serialization.Encoding.PEM) + ca_pem)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_pem)
    return files
