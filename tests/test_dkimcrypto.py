"""OpenSSL's RSA check (gateway/dkimcrypto.py) gives dkimpy's own answer on what signers produce."""

from __future__ import annotations

import hashlib
import math

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import dkimcrypto, senderauth  # noqa: F401  (importing senderauth installs the check)

PURE = dkim.crypto.RSASSA_PKCS1_v1_5_verify
KEYS = {bits: rsa.generate_private_key(public_exponent=65537, key_size=bits) for bits in (1024, 2048)}


def public(key: rsa.RSAPrivateKey) -> dict:
    numbers = key.public_key().public_numbers()
    return {"modulus": numbers.n, "publicExponent": numbers.e}


def signed(key: rsa.RSAPrivateKey, data: bytes, name: str = "sha256") -> tuple:
    algorithm = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}[name]
    digest = hashlib.new(name, data)
    return digest, key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


def both(digest, signature: bytes, public_key: dict) -> tuple[bool, bool]:
    return PURE(digest, signature, public_key), dkimcrypto.rsassa_pkcs1_v1_5_verify(digest, signature, public_key)


def test_importing_senderauth_makes_dkimpy_verify_with_openssl():
    assert dkim.RSASSA_PKCS1_v1_5_verify is dkimcrypto.rsassa_pkcs1_v1_5_verify
    dkimcrypto.install()  # a second install changes nothing
    assert dkim.RSASSA_PKCS1_v1_5_verify is dkimcrypto.rsassa_pkcs1_v1_5_verify


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200), bits=st.sampled_from(sorted(KEYS)), name=st.sampled_from(["sha256", "sha1"]),
       flip=st.one_of(st.none(), st.integers(min_value=0)))
def test_answers_as_dkimpy_for_good_and_damaged_signatures(data, bits, name, flip):
    key = KEYS[bits]
    digest, signature = signed(key, data, name)
    if flip is not None:
        position = flip % (len(signature) * 8)
        signature = bytearray(signature)
        signature[position // 8] ^= 1 << (position % 8)
        signature = bytes(signature)
    pure, openssl = both(digest, signature, public(key))
    assert openssl == pure == (flip is None)


def test_a_signature_without_its_leading_zero_octets_still_verifies():
    # The same integer: a signer that writes it with fewer octets signs as well (dkimpy accepts it).
    key = KEYS[1024]
    for attempt in range(3000):
        digest, signature = signed(key, b"message %d" % attempt)
        if signature[0] == 0:
            break
    else:
        pytest.fail("no signature with a leading zero octet in 3000 tries")
    assert both(digest, signature.lstrip(b"\0"), public(key)) == (True, True)
    assert both(digest, b"\0" + signature, public(key)) == (True, True)


def test_the_wrong_digest_or_the_wrong_key_fails():
    digest, signature = signed(KEYS[2048], b"the body")
    assert both(hashlib.sha256(b"another body"), signature, public(KEYS[2048])) == (False, False)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert both(digest, signature, public(other)) == (False, False)
    assert both(digest, b"", public(KEYS[2048])) == (False, False)


def test_a_value_above_the_modulus_is_refused():
    # s + n is the same signature to Python's pow (dkimpy accepts it) but not a valid encoding
    # (RFC 8017 section 8.2.2): OpenSSL refuses it, and so does the gateway now.
    key = KEYS[1024]
    digest, signature = signed(key, b"the body")
    numbers = public(key)
    malleated = (int.from_bytes(signature, "big") + numbers["modulus"]).to_bytes(len(signature) + 1, "big")
    assert both(digest, malleated, numbers) == (True, False)


def test_a_modulus_too_small_for_the_digest_raises_as_dkimpy_does():
    small = {"modulus": (1 << 480) + 1, "publicExponent": 65537}  # 61 octets: DigestInfo + 11 is 62
    for check in (PURE, dkimcrypto.rsassa_pkcs1_v1_5_verify):
        with pytest.raises(dkim.crypto.DigestTooLargeError):
            check(hashlib.sha256(b"x"), b"\1" * 61, small)


def test_a_key_openssl_will_not_load_is_left_to_dkimpy():
    # Exponent 1: every "signature" is its own encoding. OpenSSL refuses the key; dkimpy's check,
    # which the gateway then uses, answers as it always did.
    numbers = public(KEYS[1024])
    weak = {"modulus": numbers["modulus"], "publicExponent": 1}
    digest = hashlib.sha256(b"x")
    encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(digest, 128)
    assert both(digest, encoded, weak) == (True, True)


def _primes(bits: int) -> list[int]:
    """Primes of 512 bits (the factors of 1024-bit keys cryptography makes) whose product has over ``bits`` bits."""
    primes: list[int] = []
    while math.prod(primes).bit_length() <= bits:
        numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_numbers()
        primes += [numbers.p, numbers.q]
    return primes


def _exponent_over(bits: int, primes: list[int]) -> int:
    exponent = (1 << bits) + 1
    while any(math.gcd(exponent, prime - 1) != 1 for prime in primes):
        exponent += 2
    return exponent


def _signed_by_hand(primes: list[int], exponent: int, data: bytes) -> tuple:
    """A valid RSASSA-PKCS1-v1_5 signature under the multi-prime key n = product of ``primes``,
    computed prime by prime (Chinese remainders): a key cryptography cannot make or load."""
    modulus = math.prod(primes)
    size = (modulus.bit_length() + 7) // 8
    digest = hashlib.sha256(data)
    encoded = int.from_bytes(dkim.crypto.EMSA_PKCS1_v1_5_encode(digest, size), "big")
    value, product = 0, 1
    for prime in primes:
        residue = pow(encoded, pow(exponent, -1, prime - 1), prime)
        value += product * ((residue - value) * pow(product, -1, prime) % prime)
        product *= prime
    assert pow(value, exponent, modulus) == encoded
    return digest, value.to_bytes(size, "big"), {"modulus": modulus, "publicExponent": exponent}


@pytest.mark.parametrize("modulus_bits, exponent_bits", [
    (16384, 16),   # a modulus over OPENSSL_RSA_MAX_MODULUS_BITS, exponent 65537 or so
    (4000, 65),    # over 3072 bits, an exponent over OPENSSL_RSA_MAX_PUBEXP_BITS
    (2000, 100),   # an exponent OpenSSL takes under 3072 bits: dkimpy's as well, whatever the version
])
def test_a_key_beyond_openssl_limits_is_judged_by_dkimpy(modulus_bits, exponent_bits):
    # Found by a security review: a valid signature under a 4096-bit key with a 66-bit exponent
    # was True for dkimpy and False through OpenSSL, which refuses such keys.
    primes = _primes(modulus_bits)
    digest, signature, key = _signed_by_hand(primes, _exponent_over(exponent_bits, primes), b"the body")
    assert both(digest, signature, key) == (True, True)
    assert both(hashlib.sha256(b"another body"), signature, key) == (False, False)
    damaged = bytes([signature[0] ^ 1]) + signature[1:]
    assert both(digest, damaged, key) == (False, False)
    # A value above the modulus is refused on this path too, as on OpenSSL's.
    malleated = (int.from_bytes(signature, "big") + key["modulus"]).to_bytes(len(signature) + 1, "big")
    assert both(digest, malleated, key) == (True, False)
