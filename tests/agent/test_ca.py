"""The small CA of frieze.protocol.ca: subjects chosen by the CA, CSR signatures checked, key file modes,
server/client material made once and reused (re-issued when the host names change)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from frieze.core.errors import UsageError
from frieze.protocol.ca import (
    CertificateAuthority,
    ensure_client_tls,
    ensure_server_tls,
    fingerprint,
    make_csr,
    new_key,
    role_of,
)


def test_issue_uses_callers_subject_and_checks_csr(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert CertificateAuthority.create(tmp_path / "ca").fingerprint == ca.fingerprint  # loaded, not remade
    key = new_key()
    cert = ca.issue(make_csr(key, "coordinator", ["evil.example"]), "h1", 30, role="agent")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "h1"
    assert role_of(cert.subject) == "agent"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "h1" in sans.get_values_for_type(x509.DNSName)
    cert.verify_directly_issued_by(ca.cert)
    assert fingerprint(cert) == fingerprint(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UsageError, match="role"):
        ca.issue(make_csr(key, "x"), "h1", role="admin")
    with pytest.raises(UsageError, match="not a PEM CSR"):
        ca.issue(b"garbage", "h1")
    # a CSR whose signature does not match its public key
    other = new_key()
    forged = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h1")])).sign(other, hashes.SHA256()))
    pem = forged.public_bytes(serialization.Encoding.PEM)
    tampered = pem.replace(pem[200:204], b"AAAA") if pem[200:204] != b"AAAA" else pem.replace(pem[200:204], b"BBBB")
    with pytest.raises(UsageError):
        ca.issue(tampered, "h1")


def test_server_and_client_material_reused(tmp_path: Path) -> None:
    s1 = ensure_server_tls(tmp_path / "ca", ["coord.example"])
    s2 = ensure_server_tls(tmp_path / "ca", ["coord.example"])
    assert s1 == s2 and s1["cert"].read_bytes() == s2["cert"].read_bytes()
    first = s1["cert"].read_bytes()
    s3 = ensure_server_tls(tmp_path / "ca", ["coord.example", "coord2.example"])
    assert s3["cert"].read_bytes() != first  # new names → re-issued
    c = ensure_client_tls(tmp_path / "ca")
    cert = x509.load_pem_x509_certificate(c["cert"].read_bytes())
    assert role_of(cert.subject) == "coordinator"
    assert stat.S_IMODE(c["key"].stat().st_mode) == 0o600
