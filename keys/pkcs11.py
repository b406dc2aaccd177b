"""A PKCS#11 signer: keys that live in an HSM (or SoftHSM2) and never leave it.

A key is named by a reference ``MODULE#TOKEN_LABEL#KEY_LABEL``, e.g.
``/usr/lib/softhsm/libsofthsm2.so#staffel#image-root-3``, or by the URI
``pkcs11:MODULE#TOKEN_LABEL#KEY_LABEL`` in securesystemslib's signer registry. The
user PIN comes from ``STAFFEL_HSM_PIN``. Keys are ECDSA P-256 (``ecdsa-sha2-nistp256``):
the HSM signs the SHA-256 digest of the payload (``CKM_ECDSA``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Final

import PyKCS11  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey

from keys.errors import HsmError

PIN_ENV: Final = "STAFFEL_HSM_PIN"
URI_SCHEME: Final = "pkcs11"
SCHEME: Final = "ecdsa-sha2-nistp256"
# DER of the OID prime256v1 (1.2.840.10045.3.1.7), the CKA_EC_PARAMS of P-256 keys.
_P256_PARAMS: Final = bytes.fromhex("06082a8648ce3d030107")
_COORDINATE_BYTES: Final = 32


@dataclass(frozen=True)
class Pkcs11Key:
    """Where a key lives: the PKCS#11 module, the token's label and the key's label."""

    module: str
    token: str
    label: str

    @classmethod
    def parse(cls, reference: str) -> Pkcs11Key:
        """Reads ``MODULE#TOKEN_LABEL#KEY_LABEL``.

        Raises:
            HsmError: The reference does not have three non-empty parts.
        """
        parts = reference.removeprefix(f"{URI_SCHEME}:").split("#")
        if len(parts) != 3 or not all(parts):
            raise HsmError(
                f"invalid PKCS#11 key {reference!r}: write MODULE#TOKEN_LABEL#KEY_LABEL, e.g. "
                f"/usr/lib/softhsm/libsofthsm2.so#staffel#image-root"
            )
        return cls(*parts)

    def uri(self) -> str:
        """The key as a securesystemslib private key URI."""
        return f"{URI_SCHEME}:{self.module}#{self.token}#{self.label}"


class _Session:
    """A logged-in PKCS#11 session on the token with the key's label."""

    def __init__(self, key: Pkcs11Key, pin: str | None) -> None:
        pin = pin if pin is not None else os.environ.get(PIN_ENV)
        if not pin:
            raise HsmError(f"no PIN for token {key.token!r}: set {PIN_ENV}")
        self.library = PyKCS11.PyKCS11Lib()
        try:
            self.library.load(key.module)
            slot = self._slot(key)
            self.session = self.library.openSession(
                slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION
            )
            self.session.login(pin)
        except PyKCS11.PyKCS11Error as error:
            raise HsmError(f"cannot open token {key.token!r} with {key.module}: {error}") from error

    def _slot(self, key: Pkcs11Key) -> Any:
        for slot in self.library.getSlotList(tokenPresent=True):
            if self.library.getTokenInfo(slot).label.strip() == key.token:
                return slot
        raise HsmError(f"no token labelled {key.token!r} in {key.module}: check the label")

    def find(self, object_class: int, label: str) -> Any:
        found = self.session.findObjects(
            [(PyKCS11.CKA_CLASS, object_class), (PyKCS11.CKA_LABEL, label)]
        )
        if len(found) != 1:
            raise HsmError(f"expected one key labelled {label!r} on the token, found {len(found)}")
        return found[0]

    def close(self) -> None:
        try:
            self.session.logout()
            self.session.closeSession()
        except PyKCS11.PyKCS11Error:
            pass


def generate_key(key: Pkcs11Key, *, pin: str | None = None) -> SSlibKey:
    """Creates an ECDSA P-256 key pair on the token and returns its public key.

    Raises:
        HsmError: The token cannot be used or already holds a key with that label.
    """
    session = _Session(key, pin)
    try:
        existing = session.session.findObjects([(PyKCS11.CKA_LABEL, key.label)])
        if existing:
            raise HsmError(f"token {key.token!r} already holds a key labelled {key.label!r}")
        common = [
            (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
            (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_LABEL, key.label),
        ]
        public_template = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY),
            (PyKCS11.CKA_VERIFY, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_EC_PARAMS, _P256_PARAMS),
            *common,
        ]
        private_template = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
            (PyKCS11.CKA_SIGN, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_PRIVATE, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_SENSITIVE, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_EXTRACTABLE, PyKCS11.CK_FALSE),
            *common,
        ]
        try:
            session.session.generateKeyPair(
                public_template, private_template, mecha=PyKCS11.MechanismECGENERATEKEYPAIR
            )
        except PyKCS11.PyKCS11Error as error:
            raise HsmError(f"cannot create {key.label!r} on {key.token!r}: {error}") from error
        return _public_key(session, key)
    finally:
        session.close()


def _public_key(session: _Session, key: Pkcs11Key) -> SSlibKey:
    handle = session.find(PyKCS11.CKO_PUBLIC_KEY, key.label)
    [encoded] = session.session.getAttributeValue(handle, [PyKCS11.CKA_EC_POINT])
    point = bytes(encoded)
    # CKA_EC_POINT is a DER OCTET STRING around the uncompressed point (04 || X || Y).
    if len(point) == 2 + 1 + 2 * _COORDINATE_BYTES and point[0] == 0x04:
        point = point[2:]
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return SSlibKey.from_crypto(public, scheme=SCHEME)


class Pkcs11Signer(Signer):
    """Signs with an ECDSA P-256 key on a PKCS#11 token; the private key never leaves it."""

    def __init__(self, key: Pkcs11Key, public_key: SSlibKey, *, pin: str | None = None) -> None:
        """A signer for ``key``, whose public half is ``public_key``."""
        self._key = key
        self._public_key = public_key
        self._pin = pin

    @classmethod
    def from_reference(cls, reference: str, *, pin: str | None = None) -> Pkcs11Signer:
        """A signer for ``MODULE#TOKEN_LABEL#KEY_LABEL``, its public key read from the token.

        Raises:
            HsmError: The token or key cannot be used.
        """
        key = Pkcs11Key.parse(reference)
        session = _Session(key, pin)
        try:
            public = _public_key(session, key)
        finally:
            session.close()
        return cls(key, public, pin=pin)

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> Pkcs11Signer:
        """securesystemslib's factory: ``pkcs11:MODULE#TOKEN_LABEL#KEY_LABEL``."""
        if not isinstance(public_key, SSlibKey):
            raise TypeError(f"expected an SSlibKey, got {type(public_key).__name__}")
        pin = secrets_handler("PIN") if secrets_handler is not None else None
        return cls(Pkcs11Key.parse(priv_key_uri), public_key, pin=pin)

    @property
    def public_key(self) -> Key:
        """The public key the token's private key belongs to."""
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        """Signs ``payload`` on the token.

        Raises:
            HsmError: The token refused to sign.
        """
        digest = hashlib.sha256(payload).digest()
        session = _Session(self._key, self._pin)
        try:
            handle = session.find(PyKCS11.CKO_PRIVATE_KEY, self._key.label)
            raw = bytes(
                session.session.sign(handle, digest, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None))
            )
        except PyKCS11.PyKCS11Error as error:
            raise HsmError(f"token {self._key.token!r} refused to sign: {error}") from error
        finally:
            session.close()
        r = int.from_bytes(raw[:_COORDINATE_BYTES], "big")
        s = int.from_bytes(raw[_COORDINATE_BYTES:], "big")
        return Signature(self._public_key.keyid, encode_dss_signature(r, s).hex())
