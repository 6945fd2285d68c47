"""The local CA and its localhost certificate: made once, renewed before expiry (fake clock)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fluxgw import tls
from fluxgw.errors import FluxError

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def leaf_of(files: tls.CertFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert.read_bytes())  # the first PEM block


def test_the_ca_is_made_once_p256_key_0600_named_for_flux_and_the_host(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path / "ca", clock=Clock(T0))
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.folder.stat().st_mode) & 0o077 == 0
    cert = ca.certificate()
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert "flux" in name and socket.gethostname()[:20] in name
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    again = tls.ensure_ca(tmp_path / "ca", clock=Clock(T0 + dt.timedelta(days=400)))
    assert again.certificate().serial_number == cert.serial_number


def test_the_ca_may_only_sign_loopback_names(tmp_path: Path) -> None:
    cert = tls.ensure_ca(tmp_path, clock=Clock(T0)).certificate()
    ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert set(ext.value.permitted_subtrees or ()) == {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    }


def test_half_a_ca_is_refused_not_replaced(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path, clock=Clock(T0))
    ca.key.unlink()
    with pytest.raises(FluxError, match="only half of the local CA"):
        tls.ensure_ca(tmp_path)


def test_the_leaf_names_localhost_and_both_loopback_addresses(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path, clock=Clock(T0))
    files = tls.ensure_leaf(ca, clock=Clock(T0))
    leaf = leaf_of(files)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(map(str, names.get_values_for_type(x509.IPAddress))) == {"127.0.0.1", "::1"}
    leaf.verify_directly_issued_by(ca.certificate())
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert files.cert.read_bytes().endswith(ca.cert.read_bytes())  # served with its chain


@pytest.mark.parametrize(
    ("days_later", "renewed"),
    [(0, False), (59, False), (61, True), (200, True)],  # 90-day leaf, renewed with < 30 left
)
def test_the_leaf_is_renewed_before_it_expires(
    tmp_path: Path, days_later: int, renewed: bool
) -> None:
    ca = tls.ensure_ca(tmp_path, clock=Clock(T0))
    first = leaf_of(tls.ensure_leaf(ca, clock=Clock(T0))).serial_number
    later = Clock(T0 + dt.timedelta(days=days_later))
    leaf = leaf_of(tls.ensure_leaf(ca, clock=later))
    assert (leaf.serial_number != first) is renewed
    assert leaf.not_valid_after_utc - later.now > tls.RENEW_BEFORE


def test_needs_renewal_says_why(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path / "a", clock=Clock(T0))
    leaf = leaf_of(tls.ensure_leaf(ca, clock=Clock(T0)))
    other = tls.ensure_ca(tmp_path / "b", clock=Clock(T0)).certificate()
    assert tls.needs_renewal(leaf, ca.certificate(), T0) is None
    assert tls.needs_renewal(leaf, ca.certificate(), T0 + dt.timedelta(days=89)) == "expires soon"
    assert tls.needs_renewal(leaf, ca.certificate(), T0 - dt.timedelta(days=1)) == "not valid yet"
    assert tls.needs_renewal(leaf, other, T0) == "issued by another CA"


def test_a_new_ca_gets_a_new_leaf(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path, clock=Clock(T0))
    tls.ensure_leaf(ca, clock=Clock(T0))
    ca.cert.unlink()
    ca.key.unlink()
    new_ca = tls.ensure_ca(tmp_path, clock=Clock(T0))
    leaf_of(tls.ensure_leaf(new_ca, clock=Clock(T0))).verify_directly_issued_by(
        new_ca.certificate()
    )


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A trustme certificate + key, and a key of another certificate."""
    ca = trustme.CA()
    cert, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    paths = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "other-key.pem"
    cert.cert_chain_pems[0].write_to_path(paths[0])
    cert.private_key_pem.write_to_path(paths[1])
    other.private_key_pem.write_to_path(paths[2])
    return paths


def test_given_files_that_fit_are_used(pair: tuple[Path, Path, Path]) -> None:
    assert tls.check_given(pair[0], pair[1]) == tls.CertFiles(pair[0], pair[1])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("mismatch", "the key does not belong to the certificate"),
        ("missing", "no such file"),
        ("garbage", "not a PEM certificate"),
        ("swapped", "not a PEM"),
    ],
)
def test_bad_given_files_are_one_clear_line(
    pair: tuple[Path, Path, Path], tmp_path: Path, case: str, message: str
) -> None:
    cert, key, other = pair
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    cert, key = {
        "mismatch": (cert, other),
        "missing": (cert, tmp_path / "nope.pem"),
        "garbage": (garbage, key),
        "swapped": (key, cert),
    }[case]
    with pytest.raises(FluxError, match=message) as caught:
        tls.check_given(cert, key)
    assert "\n" not in caught.value.message


def test_functions_get_a_bundle_of_system_cas_plus_the_local_ca(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path, clock=Clock(T0))
    bundle = tls.write_bundle(ca.cert, ca.bundle).read_bytes()
    system = tls.system_ca_file()
    assert system is not None
    assert bundle.startswith(system.read_bytes().rstrip(b"\n"))  # SSL_CERT_FILE replaces them
    assert bundle.endswith(ca.cert.read_bytes())
    trust = tls.FunctionTrust(ca.cert, ca.bundle)
    assert trust.env("python") == {
        "SSL_CERT_FILE": str(ca.bundle),
        "REQUESTS_CA_BUNDLE": str(ca.bundle),
    }
    assert trust.env("node") == {"NODE_EXTRA_CA_CERTS": str(ca.cert)}  # added to node's roots
    assert trust.env("deno") == {"DENO_CERT": str(ca.cert)}
