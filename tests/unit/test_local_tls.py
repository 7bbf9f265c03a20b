"""The local CA, the broker's SASL_SSL listener config and the local registry's URLs."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from cryptography import x509

from streamml.broker import LocalBroker
from streamml.cli import _scram_password
from streamml.localregistry import LocalRegistry
from streamml.tls import LocalCA


def test_the_local_ca_signs_a_server_certificate_that_tls_clients_accept(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path / "tls")
    server = ca.issue("broker", hosts=("127.0.0.1", "localhost"))
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server.cert_path, server.key_path)  # key matches the cert
    cert = x509.load_pem_x509_certificate(server.cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    for secret in (ca.key_path, server.key_path, server.keystore_path):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    keystore = server.keystore_path.read_text()
    assert keystore.count("BEGIN CERTIFICATE") == 2 and "BEGIN PRIVATE KEY" in keystore
    # made once, reused: a second call keeps the same CA
    assert LocalCA.create(tmp_path / "tls").cert_path.read_bytes() == ca.cert_path.read_bytes()


def test_the_broker_config_has_a_sasl_ssl_listener_only_when_asked(tmp_path: Path) -> None:
    plain = LocalBroker(run_dir=tmp_path / "plain", port=19001)
    plain.run_dir.mkdir()
    props = plain._write_config(19002).read_text()
    assert "SASL_SSL" not in props and plain.sasl_ssl_bootstrap is None

    secure = LocalBroker(run_dir=tmp_path / "secure", port=19001, sasl_ssl_port=19003)
    secure.run_dir.mkdir()
    props = secure._write_config(19002).read_text()
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19001,SASL_SSL://127.0.0.1:19003\n" in props
    assert "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512\n" in props
    assert "inter.broker.listener.name=PLAINTEXT\n" in props
    assert secure.sasl_ssl_bootstrap == "127.0.0.1:19003"
    assert secure.ca_path.exists()


def test_the_dev_scram_password_is_made_once_and_readable_only_by_its_owner(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kafka" / "svc.password"
    first = _scram_password(path)
    assert len(first) >= 20 and _scram_password(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_registry_url_is_the_ccompat_api_over_http_or_https(tmp_path: Path) -> None:
    plain = LocalRegistry(run_dir=tmp_path, port=18081)
    assert plain.url == "http://127.0.0.1:18081/apis/ccompat/v7" and plain.ca_path is None
    secure = LocalRegistry(run_dir=tmp_path, port=18081, tls_dir=tmp_path / "tls")
    assert secure.url.startswith("https://127.0.0.1:18081/")
    assert secure.ca_path == tmp_path / "tls" / "ca.pem"
