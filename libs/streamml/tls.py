"""A private CA and server certificates for the local broker's SASL_SSL listener and the
local schema registry's HTTPS port (development and tests only).

Made with ``cryptography`` (already a dependency for model signatures), so no openssl or
keytool is needed; Kafka reads the PEM files directly (``ssl.keystore.type=PEM``) and
librdkafka and the registry client take the CA file as ``ssl.ca.location``.

>>> ca = LocalCA.create(Path("/tmp/demo-tls"))                     # doctest: +SKIP
>>> server = ca.issue("broker", hosts=("127.0.0.1", "localhost"))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_DAYS = 825
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files of one server: its certificate (with the CA after it) and its key."""

    cert_path: Path
    key_path: Path
    #: certificate chain and unencrypted PKCS#8 key in one file (Kafka's PEM keystore)
    keystore_path: Path


@dataclass(frozen=True)
class LocalCA:
    """A self-signed CA whose certificate and key live in ``directory``."""

    directory: Path

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "ca-key.pem"

    @classmethod
    def create(cls, directory: Path, *, name: str = "streamml local CA") -> LocalCA:
        """The CA in ``directory``; made the first time, reused afterwards."""
        ca = cls(Path(directory))
        if ca.cert_path.exists() and ca.key_path.exists():
            return ca
        ca.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_private(ca.key_path, _pkcs8(key))
        ca.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ca

    def issue(
        self, name: str, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> ServerCertificate:
        """A server certificate for ``hosts`` signed by this CA (reused when present)."""
        result = ServerCertificate(
            cert_path=self.directory / f"{name}.pem",
            key_path=self.directory / f"{name}-key.pem",
            keystore_path=self.directory / f"{name}-keystore.pem",
        )
        if result.cert_path.exists() and result.key_path.exists():
            return result
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_path.read_bytes()
        key_pem = _pkcs8(key)
        _write_private(result.key_path, key_pem)
        _write_private(result.keystore_path, chain + key_pem)
        result.cert_path.write_bytes(chain)
        return result


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)
