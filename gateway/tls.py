"""The listener's TLS: a server context with current settings, and what doctor reads of a certificate."""

from __future__ import annotations

import ssl
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

# Forward-secret AEAD suites for TLS 1.2, as in Mozilla's "intermediate" profile; TLS 1.3 suites
# are all acceptable and are not governed by this string.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """A context for STARTTLS (RFC 3207): TLS 1.2 or newer, no compression, no renegotiation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 deprecates TLS 1.0 and 1.1; RFC 8314 section 4.1 asks mail servers for 1.2 or newer.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Compression leaks plaintext lengths (CRIME); renegotiation by the client is a DoS lever.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(TLS12_CIPHERS)
    # Without it, OpenSSL would ask for the passphrase of an encrypted key on the terminal.
    context.load_cert_chain(certificate, key, password=_no_passphrase)
    return context


def _no_passphrase() -> bytes:
    raise ValueError("it is encrypted, and the gateway reads its key without a passphrase")


def certificate_not_after(certificate: Path) -> datetime:
    """When the first certificate in a PEM file (the server's own, before its chain) expires."""
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    return loaded.not_valid_after_utc.astimezone(timezone.utc)
