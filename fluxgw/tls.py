"""HTTPS for `flux serve --tls`: a local CA made once per user and a localhost leaf it signs.

Like mkcert or Caddy's local CA: the CA's private key never leaves its folder (0600), and the
gateway serves a short-lived leaf for ``localhost``, ``127.0.0.1`` and ``::1``, re-issued when it
nears its end. The CA is name-constrained to those names, so even a leaked CA key cannot mint a
certificate another site's browser would accept. docs/tls.md is the user's side of this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import FluxError
from .state import atomic_write_bytes

CA_DIR_ENV = "FLUX_CA_DIR"  # where the local CA lives (tests point it at a temporary folder)
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=90)
RENEW_BEFORE = dt.timedelta(days=30)  # a leaf with less left than this is re-issued
LEAF_DNS = ("localhost",)
LEAF_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
# What the CA may sign at all (RFC 5280 name constraints): loopback names only.
PERMITTED = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
    x509.IPAddress(ipaddress.ip_network("::1/128")),
)

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.frozen
class CertFiles:
    """A certificate chain and its private key, as PEM files hypercorn loads."""

    cert: Path
    key: Path


@attrs.frozen
class LocalCA:
    """The per-user CA folder and the files in it."""

    folder: Path

    @property
    def cert(self) -> Path:
        return self.folder / "flux-ca.pem"

    @property
    def key(self) -> Path:
        return self.folder / "flux-ca-key.pem"

    @property
    def leaf(self) -> CertFiles:
        return CertFiles(self.folder / "localhost.pem", self.folder / "localhost-key.pem")

    @property
    def bundle(self) -> Path:
        """System CAs + this CA, for clients whose setting replaces the default bundle."""
        return self.folder / "trust-bundle.pem"

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())


def default_ca_dir() -> Path:
    """``$FLUX_CA_DIR``, else the user's data folder: ``~/.local/share/flux/ca``."""
    if os.environ.get(CA_DIR_ENV):
        return Path(os.environ[CA_DIR_ENV])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "flux" / "ca"


def ca_name() -> str:
    """Says it is flux's and whose: what a user sees in a browser's certificate viewer."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"flux local CA {user}@{socket.gethostname()}"[:64]  # CN is at most 64 characters


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Two `flux` processes starting at once make one CA and one leaf, not two."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_ca(folder: Path | None = None, *, clock: Clock = utcnow) -> LocalCA:
    """The user's CA, created on first use (P-256, key 0600); never silently replaced."""
    ca = LocalCA(folder or default_ca_dir())
    try:
        with _locked(ca.folder):
            if ca.cert.exists() and ca.key.exists():
                return ca
            if ca.cert.exists() or ca.key.exists():
                raise FluxError(
                    f"{ca.folder}: has only half of the local CA (certificate or key); "
                    "remove the folder to make a new CA"
                )
            key = ec.generate_private_key(ec.SECP256R1())
            now = clock()
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flux local development CA"),
                    x509.NameAttribute(NameOID.COMMON_NAME, ca_name()),
                ]
            )
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + CA_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
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
                )
                .add_extension(x509.NameConstraints(list(PERMITTED), None), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256())
            )
            # The key first: a crash between the two writes leaves no certificate without key.
            atomic_write_bytes(ca.key, _pem_key(key), mode=0o600)
            atomic_write_bytes(ca.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
            return ca
    except OSError as exc:
        raise FluxError(f"cannot create the local CA in {ca.folder}: {exc.strerror}") from None


def needs_renewal(
    leaf: x509.Certificate, ca_cert: x509.Certificate, now: dt.datetime
) -> str | None:
    """Why this leaf must be re-issued at ``now`` (None: it is good to serve)."""
    if leaf.not_valid_after_utc - now < RENEW_BEFORE:
        return "expires soon"
    if leaf.not_valid_before_utc > now:
        return "not valid yet"
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "issued by another CA"
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    if set(names.get_values_for_type(x509.DNSName)) != set(LEAF_DNS) or set(
        names.get_values_for_type(x509.IPAddress)
    ) != set(LEAF_IPS):
        return "names differ"
    return None


def ensure_leaf(ca: LocalCA, *, clock: Clock = utcnow) -> CertFiles:
    """The localhost certificate, re-issued when missing, near its end, or not this CA's."""
    files = ca.leaf
    now = clock()
    with _locked(ca.folder):
        ca_cert = ca.certificate()
        if files.cert.exists() and files.key.exists():
            try:
                leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
            except ValueError:
                leaf = None
            if leaf is not None and needs_renewal(leaf, ca_cert, now) is None:
                return files
        ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise FluxError(f"{ca.key}: not an EC private key")
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in LEAF_DNS]
        sans += [x509.IPAddress(ip) for ip in LEAF_IPS]
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flux local development"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        atomic_write_bytes(files.key, _pem_key(key), mode=0o600)
        # The leaf file carries the chain (leaf + CA), as servers send it.
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert.read_bytes()
        atomic_write_bytes(files.cert, chain, mode=0o644)
        return files


def local_certificate(folder: Path | None = None, *, clock: Clock = utcnow) -> CertFiles:
    """What `--tls` serves: the local CA's localhost leaf, made or renewed as needed."""
    ca = ensure_ca(folder, clock=clock)
    return ensure_leaf(ca, clock=clock)


def check_given(cert: Path, key: Path) -> CertFiles:
    """``--tls-cert``/``--tls-key`` as one usable pair, or one line that says what is wrong."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise FluxError(f"{flag} {path}: no such file")
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except ValueError:
        raise FluxError(f"--tls-cert {cert}: not a PEM certificate") from None
    try:
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except TypeError:
        raise FluxError(f"--tls-key {key}: encrypted; give the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise FluxError(f"--tls-key {key}: not a PEM private key") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        problem = exc.reason or str(exc)
        if problem == "KEY_VALUES_MISMATCH":
            problem = "the key does not belong to the certificate"
        raise FluxError(f"--tls-cert {cert} / --tls-key {key}: {problem}") from None
    return CertFiles(cert, key)


def spki_sha256(cert_pem: bytes) -> str:
    """base64 SHA-256 of a certificate's public key (Chromium's certificate pinning form)."""
    import base64

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode()


# ---------------------------------------------------------------------------------------------
# Functions trust the CA the gateway serves with, so one function can call another over HTTPS.


def system_ca_file() -> Path | None:
    """The bundle OpenSSL verifies with by default (Debian: /etc/ssl/certs/ca-certificates.crt)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    try:
        import certifi  # httpx's dependency: Mozilla's roots where the system has none
    except ImportError:
        return None
    return Path(certifi.where())


def write_bundle(ca_cert: Path, out: Path) -> Path:
    """``out`` = system CAs + ``ca_cert``: SSL_CERT_FILE *replaces* python's default roots."""
    system = system_ca_file()
    head = system.read_bytes().rstrip(b"\n") + b"\n" if system else b""
    atomic_write_bytes(out, head + ca_cert.read_bytes(), mode=0o644)
    return out


@attrs.frozen
class FunctionTrust:
    """The CA that functions add to their roots: its PEM, and a system + CA bundle."""

    ca_cert: Path
    bundle: Path

    def env(self, runtime: str) -> dict[str, str]:
        if runtime == "python":
            # ssl's default context (urllib, http.client, aiohttp) and requests.
            return {"SSL_CERT_FILE": str(self.bundle), "REQUESTS_CA_BUNDLE": str(self.bundle)}
        if runtime == "node":
            return {"NODE_EXTRA_CA_CERTS": str(self.ca_cert)}  # added to node's roots
        if runtime == "deno":
            return {"DENO_CERT": str(self.ca_cert)}  # added to deno's roots
        return {}


_function_trust: FunctionTrust | None = None


def trust_in_functions(trust: FunctionTrust | None) -> None:
    """Set (or clear) the CA that workers started from now on trust; one per gateway process."""
    global _function_trust
    _function_trust = trust


def function_env(runtime: str) -> dict[str, str]:
    """Environment a worker of ``runtime`` gets so it trusts the gateway's CA (may be empty)."""
    return _function_trust.env(runtime) if _function_trust else {}


def function_trust_files() -> list[str]:
    """The files of that trust, for a sandbox to bind read-only (may be empty)."""
    if _function_trust is None:
        return []
    return [str(_function_trust.ca_cert), str(_function_trust.bundle)]


def local_function_trust(folder: Path | None = None) -> FunctionTrust:
    ca = ensure_ca(folder)
    return FunctionTrust(ca.cert, write_bundle(ca.cert, ca.bundle))
