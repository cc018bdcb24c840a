"""HTTPS for the tests: certificates made here, and a client that checks what a server presents.

The client connects to a published port on 127.0.0.1 and asks for the test domain (SNI and
Host), so nothing is ever looked up outside the machine; it verifies the chain against the CA
the test trusts and the hostname, and fails on any certificate error.
"""

import datetime
import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate (PEM, with its chain) and its private key (PEM)."""

    cert: bytes
    key: bytes

    def write(self, directory: Path, cert: str = "fullchain.pem", key: str = "privkey.pem") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / cert).write_bytes(self.cert)
        (directory / key).write_bytes(self.key)


class TestCA:
    """A certificate authority that lives for one test run."""

    __test__ = False

    def __init__(self, name: str = "Template Tests CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
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
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str) -> Issued:
        """A server certificate for these DNS names, valid for a day."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return Issued(
            cert=cert.public_bytes(serialization.Encoding.PEM) + self.pem,
            key=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    cert: x509.Certificate  # the leaf the server presented


def verifying_context(ca_pem: bytes) -> ssl.SSLContext:
    """Trust only this CA; check the hostname."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def https_connection(
    port: int, domain: str, ca_pem: bytes, timeout: float = 10
) -> http.client.HTTPConnection:
    """An HTTP connection over TLS to 127.0.0.1:port, verified as `domain`."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        tls = verifying_context(ca_pem).wrap_socket(raw, server_hostname=domain)
    except BaseException:
        raw.close()
        raise
    connection = http.client.HTTPConnection(domain, port, timeout=timeout)
    connection.sock = tls
    return connection


def https_get(
    port: int, domain: str, ca_pem: bytes, path: str, headers: dict[str, str] | None = None
) -> Answer:
    connection = https_connection(port, domain, ca_pem)
    try:
        # The certificate first: a response with `Connection: close` (a proxy's worker that is
        # shutting down after a reload) takes the socket away once its body is read.
        assert isinstance(connection.sock, ssl.SSLSocket)
        der = connection.sock.getpeercert(binary_form=True)
        assert der is not None
        connection.request("GET", path, headers={"Host": domain, **(headers or {})})
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, response.headers, body, x509.load_der_x509_certificate(der))
    finally:
        connection.close()


def negotiated_protocol(port: int, domain: str, ca_pem: bytes) -> str | None:
    """The protocol the server picks over TLS (ALPN) when a client offers HTTP/2 and 1.1."""
    context = verifying_context(ca_pem)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        return tls.selected_alpn_protocol()


def http_get_as(port: int, domain: str, path: str) -> tuple[int, http.client.HTTPMessage]:
    """Plain HTTP to 127.0.0.1:port with Host: domain; the status and headers (no redirects)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": domain})
        response = connection.getresponse()
        response.read()
        return response.status, response.headers
    finally:
        connection.close()
