"""DKIM keys made on the spot and dkimpy signing with every knob a test needs (t=, x=, l=, h=, a=)."""

from __future__ import annotations

import base64
import functools
import math
import secrets
from dataclasses import dataclass

import dkim

# Test keys only: these are made for tests and the demo, quickly, and are never meant to sign
# real mail. Real keys come from the mail system that signs (OpenDKIM, the provider).
RSA_PUBLIC_EXPONENT = 65537


@dataclass(frozen=True)
class DkimKey:
    """A signing key and the TXT record that publishes its public half."""

    private_key: bytes  # PEM for RSA; base64 of the 32-byte seed for ed25519 (what dkimpy reads)
    public_key: str  # the p= value: base64 of the DER SubjectPublicKeyInfo, or of the raw ed25519 key
    key_type: str = "rsa"  # the k= value: "rsa" or "ed25519"
    bits: int = 2048

    @property
    def txt_record(self) -> str:
        return f"v=DKIM1; k={self.key_type}; p={self.public_key}"

    @property
    def private_pem(self) -> bytes:
        return self.private_key

    def record_name(self, selector: str, domain: str) -> str:
        """Where the TXT record goes: <selector>._domainkey.<domain> (RFC 6376 section 3.6.2.1)."""
        return f"{selector}._domainkey.{domain}"


def generate_rsa_key(bits: int = 2048) -> DkimKey:
    """A fresh RSA key; keys under 1024 bits exist only to test that they are refused."""
    try:
        return _rsa_key_with_cryptography(bits)
    except (ImportError, ValueError):
        # cryptography is not a dependency of the gateway and refuses keys under 1024 bits, so
        # small keys, and any key where it is missing, are made by the code below.
        return _rsa_key_from_numbers(*_rsa_numbers(bits), bits=bits)


@functools.cache
def shared_rsa_key(bits: int = 2048, name: str = "default") -> DkimKey:
    """One key per (bits, name) for the whole test session, so tests do not pay for key making."""
    return generate_rsa_key(bits)


def generate_ed25519_key() -> DkimKey:
    """A fresh ed25519 key (RFC 8463); signing and verifying with it need PyNaCl in dkimpy."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    return DkimKey(private_key=base64.b64encode(seed), public_key=base64.b64encode(public).decode(),
                   key_type="ed25519", bits=256)


def sign(raw: bytes, key: DkimKey | bytes, domain: str, selector: str, *,
         include_headers: list[bytes] | list[str] | None = None, length: bool = False,
         algorithm: bytes | None = None, expire_in: int | None = None,
         timestamp: int | None = None, dated: bool = True, identity: bytes | None = None) -> bytes:
    """Return ``raw`` with a DKIM-Signature header prepended, lines kept as they were (CRLF).

    ``algorithm`` defaults to rsa-sha256 for an RSA key and ed25519-sha256 for an ed25519 key.
    ``timestamp`` sets t= (default: now) and ``expire_in`` adds x= that many seconds after it;
    ``dated=False`` leaves t= out, as it is optional (RFC 6376 section 3.5). ``identity`` sets i=
    (default: @domain), e.g. b"paula@sub.example.com".
    Unlike dkimpy, ``include_headers`` may leave From out, to test that such a signature is
    refused; dkimpy's default list is used when it is None.
    """
    if isinstance(key, DkimKey):
        private_key = key.private_key
        default_algorithm = b"ed25519-sha256" if key.key_type == "ed25519" else b"rsa-sha256"
    else:
        private_key, default_algorithm = key, b"rsa-sha256"
    headers: list[bytes] | None = None
    omit_from = False
    if include_headers is not None:
        headers = [(name.encode("ascii") if isinstance(name, str) else name).lower()
                   for name in include_headers]
        if b"from" not in headers:
            # dkimpy refuses to sign without From (RFC 6376 section 5.4); sign with it and take
            # it out again before the hash is computed.
            omit_from = True
            headers.append(b"from")
    if not dated and (timestamp is not None or expire_in is not None):
        raise ValueError("an undated signature has no t= to set, nor one for x= to follow")
    signer = _Signer(raw, signature_algorithm=algorithm or default_algorithm, linesep=b"\r\n",
                     timestamp=timestamp, expire_in=expire_in, omit_from=omit_from, dated=dated)
    header = signer.sign(selector.encode("ascii"), domain.encode("ascii"), private_key,
                         include_headers=headers, length=length, identity=identity)
    return header + raw


class _Signer(dkim.DKIM):
    """dkimpy's signer with control over t=, x= and whether From is in h=."""

    def __init__(self, message: bytes, *, timestamp: int | None, expire_in: int | None,
                 omit_from: bool, dated: bool = True, **options: object) -> None:
        super().__init__(message, **options)
        self._dated = dated
        self._timestamp = timestamp
        self._expire_in = expire_in
        self._omit_from = omit_from

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk, standardize=False):
        # dkimpy 1.1.8 builds the tag list in DKIM.sign and hashes and signs it here, so the
        # tags changed here are the ones covered by b=.
        if self._omit_from:
            include_headers = tuple(name for name in include_headers if name != b"from")
        adjusted = []
        for tag, value in fields:
            if tag == b"t" and not self._dated:
                continue
            if tag == b"t" and self._timestamp is not None:
                value = str(int(self._timestamp)).encode("ascii")
            if tag == b"h" and self._omit_from:
                value = b" : ".join(include_headers)
            adjusted.append((tag, value))
            if tag == b"t" and self._expire_in is not None:
                adjusted.append((b"x", str(int(value) + int(self._expire_in)).encode("ascii")))
        return super().gen_header(adjusted, include_headers, canon_policy, header_name, pk,
                                  standardize)


# --- RSA keys -----------------------------------------------------------------------------------


def _rsa_key_with_cryptography(bits: int) -> DkimKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=bits)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(private_key=pem, public_key=base64.b64encode(public).decode(), bits=bits)


def _rsa_numbers(bits: int) -> tuple[int, int]:
    """Two primes whose product has exactly ``bits`` bits and suits the public exponent."""
    if bits < 256 or bits % 2:
        raise ValueError("an RSA test key needs an even number of bits, 256 or more")
    while True:
        first, second = _random_prime(bits // 2), _random_prime(bits // 2)
        if first != second:
            return first, second


_SMALL_PRIMES = [number for number in range(3, 2000, 2)
                 if all(number % divisor for divisor in range(3, math.isqrt(number) + 1, 2))]


def _random_prime(bits: int) -> int:
    while True:
        # The two top bits set make the product of two such primes exactly twice as long.
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if (candidate - 1) % RSA_PUBLIC_EXPONENT and _probably_prime(candidate):
            return candidate


def _probably_prime(number: int, rounds: int = 32) -> bool:
    # Miller-Rabin with random bases; 32 rounds leave an error chance under 2**-64, plenty for a
    # key that signs test messages.
    for small in _SMALL_PRIMES:
        if number % small == 0:
            return number == small
    odd, twos = number - 1, 0
    while odd % 2 == 0:
        odd //= 2
        twos += 1
    for _round in range(rounds):
        witness = pow(secrets.randbelow(number - 3) + 2, odd, number)
        if witness in (1, number - 1):
            continue
        for _square in range(twos - 1):
            witness = pow(witness, 2, number)
            if witness == number - 1:
                break
        else:
            return False
    return True


def _rsa_key_from_numbers(first: int, second: int, *, bits: int) -> DkimKey:
    modulus = first * second
    exponent = RSA_PUBLIC_EXPONENT
    private_exponent = pow(exponent, -1, (first - 1) * (second - 1))
    # RSAPrivateKey (RFC 8017 appendix A.1.2), the PEM form dkimpy reads.
    private_der = _der_sequence(
        _der_integer(0), _der_integer(modulus), _der_integer(exponent),
        _der_integer(private_exponent), _der_integer(first), _der_integer(second),
        _der_integer(private_exponent % (first - 1)), _der_integer(private_exponent % (second - 1)),
        _der_integer(pow(second, -1, first)))
    body = base64.b64encode(private_der).decode()
    lines = [body[start:start + 64] for start in range(0, len(body), 64)]
    pem = ("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines)
           + "\n-----END RSA PRIVATE KEY-----\n").encode()
    # SubjectPublicKeyInfo with rsaEncryption (RFC 3279 section 2.3.1), as DKIM's p= carries it
    # (RFC 6376 section 3.6.1).
    rsa_encryption = bytes.fromhex("06092a864886f70d010101")
    public_der = _der_sequence(
        _der_sequence(rsa_encryption, b"\x05\x00"),
        _der(0x03, b"\x00" + _der_sequence(_der_integer(modulus), _der_integer(exponent))))
    return DkimKey(private_key=pem, public_key=base64.b64encode(public_der).decode(), bits=bits)


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        encoded_length = bytes([length])
    else:
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        encoded_length = bytes([0x80 | len(size)]) + size
    return bytes([tag]) + encoded_length + content


def _der_integer(value: int) -> bytes:
    # A leading zero byte keeps a positive number whose top bit is set from reading as negative.
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_sequence(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))
