"""Throwaway TLS material for tests: a private CA and a server certificate it signs,
or a self-signed server certificate. Made with `cryptography` (Ansible needs it
already), valid for a day, never written outside the directory given.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ServerCert:
    """PEM files of a server certificate; `ca` is what a client must trust."""

    cert: Path
    key: Path
    ca: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _build(
    subject: x509.Name, issuer: x509.Name, key, signer, *, ca: bool, hosts: tuple[str, ...] = ()
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def private_ca(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCert:
    """A CA and a server certificate for `hosts` signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _build(_name("LEAM test CA"), _name("LEAM test CA"), ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build(_name(hosts[0]), ca.subject, key, ca_key, ca=False, hosts=hosts)
    return ServerCert(
        _write(directory / "server.pem", cert),
        _write_key(directory / "server.key", key),
        _write(directory / "ca.pem", ca),
    )


def self_signed(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCert:
    """A server certificate that is its own issuer (and so its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build(_name(hosts[0]), _name(hosts[0]), key, key, ca=True, hosts=hosts)
    path = _write(directory / "self-signed.pem", cert)
    return ServerCert(path, _write_key(directory / "self-signed.key", key), path)
