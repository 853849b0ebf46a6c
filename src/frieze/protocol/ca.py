"""A small certificate authority for the agent port, CSRs for agents, and mutual-TLS ``SSLContext`` builders.

Roles are carried in the certificate subject's ``OU``: ``coordinator`` (a coordinator's client
certificate), ``agent`` (an agent: server certificate of its API and client certificate towards the
coordinator), ``server`` (the coordinator's agent-port server certificate). The CA key is EC P-256, kept in
``<dir>/ca.key`` (0600) beside ``<dir>/ca.crt``; files are written to a temporary name and renamed.

Contracts:

- :meth:`CertificateAuthority.issue` signs a CSR only after checking the CSR's own signature; the subject
  of the certificate is the one given by the caller (``cn``, ``role``), never the CSR's.
- :func:`server_context` / :func:`client_context` build contexts that require the peer to present a
  certificate chaining to the given CA (``CERT_REQUIRED``), TLS 1.2 at least.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from frieze.core.errors import IntegrityError, NotFound, UsageError

ROLE_COORDINATOR = "coordinator"
ROLE_AGENT = "agent"
ROLE_SERVER = "server"
ROLES = (ROLE_COORDINATOR, ROLE_AGENT, ROLE_SERVER)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 hex of the certificate's DER (``bytes`` may be PEM or DER)."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----") \
            else x509.load_der_x509_certificate(cert)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_csr(key: ec.EllipticCurvePrivateKey, name: str, sans: list[str] | None = None) -> bytes:
    """A PEM CSR for ``name`` with DNS/IP subject alternative names ``sans`` (the CA chooses the subject)."""
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
    gn = _general_names([name, *(sans or [])])
    if gn:
        b = b.add_extension(x509.SubjectAlternativeName(gn), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for n in names:
        if not n or n in seen:
            continue
        seen.add(n)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _sans_of(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(ext.value.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]
    return names


def role_of(subject: x509.Name) -> str | None:
    ous = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ous[0].value) if ous else None


@dataclass
class CertificateAuthority:
    """The CA that signs agent and coordinator certificates. Create with :meth:`create` or :meth:`load`."""

    dir: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @classmethod
    def create(cls, dir: Path | str, name: str = "frieze agents CA", days: int = 3650) -> CertificateAuthority:
        """Load the CA in ``dir``, or make a new one there if it has none (``dir`` created 0700)."""
        d = Path(dir)
        if (d / "ca.key").exists():
            return cls.load(d)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ca")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write(d / "ca.key", key_pem(key), 0o600)
        _write(d / "ca.crt", cert_pem(cert), 0o644)
        return cls(d, key, cert)

    @classmethod
    def load(cls, dir: Path | str) -> CertificateAuthority:
        d = Path(dir)
        try:
            key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        except FileNotFoundError as e:
            raise NotFound(f"no CA in {d} (ca.key/ca.crt missing)", path=str(d)) from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IntegrityError(f"CA key in {d} is not an EC key", path=str(d))
        return cls(d, key, cert)

    def issue(self, csr_pem: bytes | str, cn: str, days: int = 365, *, role: str = ROLE_AGENT,
              sans: list[str] | None = None, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None) -> x509.Certificate:
        """Sign ``csr_pem`` as ``CN=cn, OU=role``, valid ``days`` (or ``not_before``/``not_after``).

        SANs: ``cn`` plus the CSR's requested DNS/IP names plus ``sans``. A CSR whose signature does not
        verify, or that is not PEM, is a :class:`UsageError` and nothing is issued."""
        if role not in ROLES:
            raise UsageError(f"unknown certificate role {role!r} (one of {', '.join(ROLES)})", role=role)
        if not cn or len(cn) > 64:
            raise UsageError("certificate common name must be 1..64 characters", cn=cn)
        raw = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(raw)
        except ValueError as e:
            raise UsageError(f"the certificate request is not a PEM CSR: {e}") from e
        if not csr.is_signature_valid:
            raise UsageError("the certificate request's signature does not verify")
        now = dt.datetime.now(dt.UTC)
        nb = not_before or (now - dt.timedelta(minutes=5))
        na = not_after or (now + dt.timedelta(days=days))
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)]))
             .issuer_name(self.cert.subject).public_key(csr.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(nb).not_valid_after(na)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        gn = _general_names([cn, *_sans_of(csr), *(sans or [])])
        if gn:
            b = b.add_extension(x509.SubjectAlternativeName(gn), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def issue_pair(self, cn: str, role: str, dir: Path | str, sans: list[str] | None = None,
                   days: int = 365, **kw: dt.datetime) -> dict[str, Path]:
        """Make a key and certificate for ``cn``/``role`` into ``dir`` (``<cn>.key``, ``<cn>.crt``) and
        return ``{"cert", "key", "ca"}`` paths (the CA certificate is copied as ``ca.crt``)."""
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        key = new_key()
        cert = self.issue(make_csr(key, cn, sans), cn, days, role=role, sans=sans, **kw)
        _write(d / f"{cn}.key", key_pem(key), 0o600)
        _write(d / f"{cn}.crt", cert_pem(cert), 0o644)
        if not (d / "ca.crt").exists() or (d / "ca.crt").read_bytes() != self.cert_pem:
            _write(d / "ca.crt", self.cert_pem, 0o644)
        return {"cert": d / f"{cn}.crt", "key": d / f"{cn}.key", "ca": d / "ca.crt"}


def _ensure_pair(ca: CertificateAuthority, sub: str, cn: str, role: str, hostnames: list[str]) -> dict[str, Path]:
    d = ca.dir / sub
    paths = {"cert": d / f"{cn}.crt", "key": d / f"{cn}.key", "ca": d / "ca.crt"}
    if all(p.exists() for p in paths.values()):
        cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
        ok_time = cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
        have = set(_sans_of_cert(cert))
        if ok_time and set(hostnames) <= have and paths["ca"].read_bytes() == ca.cert_pem:
            return paths
    return ca.issue_pair(cn, role, d, sans=hostnames)


def _sans_of_cert(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName)) + \
        [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]


def ensure_server_tls(ca_dir: Path | str, hostnames: list[str]) -> dict[str, Path]:
    """The coordinator's agent-port server certificate (OU=server) for ``hostnames``, made on first use
    (and the CA with it). Returns ``{"cert", "key", "ca"}`` paths for uvicorn."""
    ca = CertificateAuthority.create(ca_dir)
    names = [h for h in dict.fromkeys([*hostnames, "localhost", "127.0.0.1"]) if h]
    return _ensure_pair(ca, "server", names[0], ROLE_SERVER, names)


def ensure_client_tls(ca_dir: Path | str, coordinator_id: str = "coordinator") -> dict[str, Path]:
    """The coordinator's client certificate (OU=coordinator) for calling agents, made on first use.
    Returns ``{"cert", "key", "ca"}`` paths (use :func:`client_context`)."""
    ca = CertificateAuthority.create(ca_dir)
    return _ensure_pair(ca, "client", coordinator_id, ROLE_COORDINATOR, [coordinator_id])


def server_context(cert: Path | str, key: Path | str, ca: Path | str) -> ssl.SSLContext:
    """A server context that requires a client certificate chaining to ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert: Path | str | None, key: Path | str | None, ca: Path | str | bytes,
                   *, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca`` (a path or PEM bytes) and presents
    ``cert``/``key`` (None: no client certificate, e.g. while enrolling)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if isinstance(ca, bytes):
        ctx.load_verify_locations(cadata=ca.decode())
    else:
        ctx.load_verify_locations(cafile=str(ca))
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx
