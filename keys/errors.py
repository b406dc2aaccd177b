"""Errors of the key tooling, drawn as a tree.

    KeyToolError
    ├── KeySetExistsError      a key set is already in the directory
    ├── KeySetNotFoundError    no key set (or a missing key file) in the directory
    ├── KeySetInvalidError     keyset.json or a key file cannot be understood
    ├── PassphraseError        the keys are encrypted and the passphrase is missing or wrong
    ├── CeremonyError          ceremony metadata is unreadable, stale or under-signed
    └── HsmError               the PKCS#11 token or its key cannot be used

Every message says what to do next.
"""


class KeyToolError(Exception):
    """Base of every error the key tooling raises on purpose."""


class KeySetExistsError(KeyToolError):
    """A key set exists already; keys are never overwritten."""


class KeySetNotFoundError(KeyToolError):
    """The directory holds no key set, or a key file of the set is missing."""


class KeySetInvalidError(KeyToolError):
    """The key set's index or one of its key files is malformed."""


class PassphraseError(KeyToolError):
    """The private keys are encrypted and no (or a wrong) passphrase was given."""


class CeremonyError(KeyToolError):
    """Metadata of the offline ceremony is unusable: unreadable, stale or under-signed."""


class HsmError(KeyToolError):
    """The PKCS#11 module, token, PIN or key cannot be used."""
