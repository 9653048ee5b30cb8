"""dkimpy's RSA signature check done by OpenSSL (cryptography) instead of Python integers.

dkimpy 1.1 checks an RSA signature with Python's ``pow`` on 2048-bit integers (dkim/crypto.py
rsa_encrypt): ~130 us of the ~375 us a 5 KB message's verify costs on the benchmark machine, the
largest single cost of a note in the gateway (issue 6, py-spy). OpenSSL does the same check in a
few microseconds. Everything else stays dkimpy's: parsing, canonicalization, the body and header
hashes, the key record and its minimum size; only the final RSASSA-PKCS1-v1_5 comparison moves.

The answers are dkimpy's for every valid signature, including one whose leading zero octets were
dropped (it is the same integer; OpenSSL wants exactly the modulus' length). They differ only for a
signature that is not a valid encoding under RFC 8017 section 8.2.2: a value at or above the
modulus (a malleated copy of a valid one), which dkimpy reduces and accepts and the gateway refuses.

OpenSSL refuses some keys dkimpy checks: a modulus over 16384 bits (OPENSSL_RSA_MAX_MODULUS_BITS),
and, for a modulus over 3072 bits, a public exponent over 64 bits (OPENSSL_RSA_MAX_PUBEXP_BITS);
it answered False for a valid signature under a 4096-bit key with a 66-bit exponent, where dkimpy
answers True (found by a security review). A key over either bound (a modulus over 16384 bits, an
exponent over 64 bits, whatever the modulus) goes to dkimpy's own function, as does a key OpenSSL
will not load at all (an even modulus or exponent, an exponent under 3 or not below the modulus)
and a hash it is not told about, so they are judged as before. Real DKIM keys (1024 to 4096 bits,
exponent 65537) never take that path.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import dkim
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

log = logging.getLogger(__name__)

_PURE = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_HASHES = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}
# The DER DigestInfo of each hash (RFC 8017 section 9.2, note 1): its length decides, as in
# dkimpy's EMSA_PKCS1_v1_5_encode, whether the modulus is too small to carry it.
_DIGEST_INFO_LENGTH = {"sha256": 19 + 32, "sha1": 15 + 20}
# OpenSSL's bounds on an RSA public key (include/openssl/rsa.h, crypto/rsa/rsa_ossl.c): over them
# it refuses to check, so such a key is dkimpy's to judge. Its exponent bound applies only over
# 3072 bits; any exponent over it goes to dkimpy here, which leaves no room for a version to differ.
_OPENSSL_MAX_MODULUS_BITS = 16384
_OPENSSL_MAX_EXPONENT_BITS = 64


@functools.lru_cache(maxsize=256)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey | None:
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError:
        return None


def rsassa_pkcs1_v1_5_verify(hash: Any, signature: bytes, public_key: dict) -> bool:
    """dkim.crypto.RSASSA_PKCS1_v1_5_verify's contract: True when ``signature`` signs ``hash``."""
    name = hash.name.lower()
    algorithm = _HASHES.get(name)
    modulus, exponent = public_key["modulus"], public_key["publicExponent"]
    beyond_openssl = (modulus.bit_length() > _OPENSSL_MAX_MODULUS_BITS
                      or exponent.bit_length() > _OPENSSL_MAX_EXPONENT_BITS)
    if algorithm is not None and beyond_openssl:
        if int.from_bytes(signature, "big") >= modulus:
            return False  # not a signature (RFC 8017 section 5.2.2), as on the OpenSSL path
        return _PURE(hash, signature, public_key)
    key = _public_key(modulus, exponent) if algorithm is not None else None
    if key is None:
        return _PURE(hash, signature, public_key)
    size = (modulus.bit_length() + 7) // 8
    if _DIGEST_INFO_LENGTH[name] + 11 > size:
        raise dkim.crypto.DigestTooLargeError()
    # dkimpy reads the octets as one integer: zeros in front (added or dropped) change nothing.
    if len(signature) > size:
        signature = signature.lstrip(b"\0")
        if len(signature) > size:
            return False  # above the modulus: not a signature (RFC 8017 section 5.2.2)
    try:
        key.verify(signature.rjust(size, b"\0"), hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


def install() -> None:
    """Make dkimpy's verifier use OpenSSL; a dkimpy without the expected function keeps its own."""
    if getattr(dkim, "RSASSA_PKCS1_v1_5_verify", None) is _PURE:
        dkim.RSASSA_PKCS1_v1_5_verify = rsassa_pkcs1_v1_5_verify
    elif getattr(dkim, "RSASSA_PKCS1_v1_5_verify", None) is not rsassa_pkcs1_v1_5_verify:
        log.warning("dkimpy changed: its RSA check is not the one gateway/dkimcrypto.py replaces; "
                    "keeping dkimpy's own (slower) check")
