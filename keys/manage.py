"""Changing a key set: creation, adding a key for a rotation, revoking a key.

The key set's ``keyset.json`` is the *wanted* state of every role; the repositories'
root metadata is the *trusted* state. A rotation first changes the key set (``add``,
``revoke``), then carries the change into a new root through the offline ceremony
(``keys.ceremony``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Metadata

from keys.ceremony import build_root, signer_from_key_file, to_bytes
from keys.errors import KeySetExistsError, KeySetInvalidError, KeyToolError
from keys.keyset import (
    ALGORITHMS,
    BINS_ROLE,
    INDEX_NAME,
    REPOSITORIES,
    ROLES,
    SUPPLIER_PREFIX,
    KeyEntry,
    KeySet,
    RoleKeys,
    index_bytes,
    key_file_name,
    read_index,
)

_SUPPLIER_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def create_keyset(
    directory: Path,
    *,
    algorithm: str,
    passphrase: bytes | None,
    root_keys: int,
    root_threshold: int,
    offline_dir: Path | None,
    offline_targets: bool,
) -> KeySet:
    """See :func:`keys.keyset.init_keyset`."""
    _check_algorithm(algorithm)
    if not 1 <= root_threshold <= root_keys <= 16:
        raise KeyToolError(
            f"a root threshold of {root_threshold} of {root_keys} keys is not possible: "
            f"choose 1 <= threshold <= keys <= 16 (e.g. 2 of 3)"
        )
    wanted: list[tuple[str, str, int, bool]] = []
    for repo in REPOSITORIES:
        for role in ROLES:
            count = root_keys if role == "root" else 1
            offline = offline_dir is not None and (
                role == "root" or (offline_targets and repo == "image" and role == "targets")
            )
            wanted += [(repo, role, number, offline) for number in range(1, count + 1)]
    wanted.append(("image", BINS_ROLE, 1, False))
    existing = [
        name
        for name in [INDEX_NAME] + [key_file_name(r, o, n) for r, o, n, _ in wanted]
        if (directory / name).exists()
    ]
    if existing:
        raise KeySetExistsError(
            f"{directory} already holds keys ({', '.join(existing)}): keys are never "
            f"overwritten; choose another --dir or move the old keys away first"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if offline_dir is not None:
        offline_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    entries: dict[str, list[KeyEntry]] = {}
    for repo, role, number, offline in wanted:
        target_dir = offline_dir if offline and offline_dir is not None else directory
        entry = write_new_key(
            target_dir, key_file_name(repo, role, number), algorithm, passphrase, offline=offline
        )
        entries.setdefault(f"{repo}.{role}", []).append(entry)
    roles = {
        name: RoleKeys(threshold=root_threshold if name.endswith(".root") else 1, keys=tuple(keys))
        for name, keys in entries.items()
    }
    data = index_bytes(roles, algorithm=algorithm, encrypted=bool(passphrase))
    write_atomically(directory / INDEX_NAME, data, mode=0o644)
    keyset = KeySet(directory, roles, encrypted=bool(passphrase), passphrase=passphrase)
    if offline_dir is not None:
        for repo in REPOSITORIES:
            _write_first_root(keyset, repo, offline_dir, passphrase)
    return keyset


def _write_first_root(
    keyset: KeySet, repo: str, offline_dir: Path, passphrase: bytes | None
) -> None:
    """Signs root version 1 with the offline root keys while they are at hand."""
    metadata = Metadata(build_root(keyset, repo))
    for entry in keyset.roles()[f"{repo}.root"].keys:
        metadata.sign(signer_from_key_file(offline_dir / entry.file, passphrase), append=True)
    write_atomically(keyset.directory / f"{repo}.1.root.json", to_bytes(metadata), mode=0o644)


def add_key(
    directory: Path,
    name: str,
    *,
    algorithm: str = "ed25519",
    passphrase: bytes | None = None,
    offline_dir: Path | None = None,
) -> KeyEntry:
    """Creates one more key for role ``name`` (``REPO.ROLE``) and adds it to the index.

    The repositories trust the new key only once a new root names it (the ceremony).

    Args:
        directory: The key set directory.
        name: The role, e.g. ``image.root``.
        algorithm: The key type.
        passphrase: Encrypts the private key (use the key set's passphrase for online keys).
        offline_dir: Writes the private key there, and marks it offline, when given.

    Raises:
        KeySetInvalidError: The role is unknown.
        KeyToolError: The algorithm is unknown.
    """
    _check_algorithm(algorithm)
    roles, encrypted = read_index(directory)
    if name not in roles:
        raise KeySetInvalidError(f"no role {name} in {directory}: use one of {', '.join(roles)}")
    repo, role = name.split(".", 1)
    taken = {entry.file for keys in roles.values() for entry in keys.keys}
    number = 1
    while (
        key_file_name(repo, role, number) in taken
        or ((offline_dir or directory) / key_file_name(repo, role, number)).exists()
    ):
        number += 1
    target_dir = offline_dir or directory
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = write_new_key(
        target_dir,
        key_file_name(repo, role, number),
        algorithm,
        passphrase,
        offline=offline_dir is not None,
    )
    current = roles[name]
    roles[name] = RoleKeys(current.threshold, (*current.keys, entry), current.paths)
    _write_index(directory, roles, encrypted)
    return entry


def add_supplier(
    directory: Path,
    name: str,
    paths: Sequence[str],
    *,
    algorithm: str = "ed25519",
    passphrase: bytes | None = None,
) -> KeyEntry:
    """Creates the Image repository role ``supplier-NAME`` with one key and its paths.

    The top-level targets delegate the target names matching ``paths`` to the role
    (before the bins, terminating) once they are next signed.

    Args:
        directory: The key set directory.
        name: The supplier, lowercase letters, digits and dashes (``brakes``).
        paths: Glob patterns over target names (``brake-ecu-*``).
        algorithm: The key type.
        passphrase: Encrypts the private key.

    Returns:
        The supplier's new key.

    Raises:
        KeySetInvalidError: The supplier exists already.
        KeyToolError: The name, a pattern or the algorithm is not valid.
    """
    _check_algorithm(algorithm)
    if not _SUPPLIER_NAME.fullmatch(name):
        raise KeyToolError(
            f"supplier name {name!r} is not valid: use lowercase letters, digits and dashes"
        )
    if not paths or any(not path or "/" in path for path in paths):
        raise KeyToolError("give at least one path pattern over target names, without '/'")
    roles, encrypted = read_index(directory)
    role = f"{SUPPLIER_PREFIX}{name}"
    if f"image.{role}" in roles:
        raise KeySetInvalidError(f"supplier {name} exists already in {directory}")
    entry = write_new_key(
        directory, key_file_name("image", role), algorithm, passphrase, offline=False
    )
    roles[f"image.{role}"] = RoleKeys(1, (entry,), tuple(paths))
    _write_index(directory, roles, encrypted)
    return entry


def add_public_key(directory: Path, name: str, public: SSlibKey, *, reference: str) -> None:
    """Adds a key whose private half lives elsewhere (an HSM) to role ``name``, offline.

    Args:
        directory: The key set directory.
        name: The role, e.g. ``image.root``.
        public: The public key.
        reference: Where the private key lives, kept in the index for the operator.

    Raises:
        KeySetInvalidError: The role is unknown.
    """
    roles, encrypted = read_index(directory)
    if name not in roles:
        raise KeySetInvalidError(f"no role {name} in {directory}: use one of {', '.join(roles)}")
    entry = KeyEntry(_safe_file_name(reference), public, offline=True)
    current = roles[name]
    roles[name] = RoleKeys(current.threshold, (*current.keys, entry), current.paths)
    _write_index(directory, roles, encrypted)


def _safe_file_name(reference: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in reference)[-100:]


def revoke_key(directory: Path, keyid: str, *, threshold: int | None = None) -> str:
    """Removes key ``keyid`` from the index; returns the role it belonged to.

    An online private key file is renamed to ``*.revoked`` so that it can never sign
    again by accident. The repositories stop trusting the key once a new root leaves it
    out (the ceremony).

    Args:
        directory: The key set directory.
        keyid: The key to revoke.
        threshold: The role's new threshold (default: unchanged, capped at its key count).

    Raises:
        KeySetInvalidError: No role holds ``keyid``, or it is the role's last key.
    """
    roles, encrypted = read_index(directory)
    for name, keys in roles.items():
        kept = tuple(entry for entry in keys.keys if entry.public.keyid != keyid)
        if len(kept) == len(keys.keys):
            continue
        if not kept:
            raise KeySetInvalidError(
                f"{keyid} is the last key of {name}: add its replacement first "
                f"(`staffel keys add --role {name}`), then revoke it"
            )
        wanted = min(threshold or keys.threshold, len(kept))
        roles[name] = RoleKeys(wanted, kept, keys.paths)
        _write_index(directory, roles, encrypted)
        [revoked] = [entry for entry in keys.keys if entry.public.keyid == keyid]
        path = directory / revoked.file
        if path.exists() and not revoked.offline:
            path.replace(path.with_name(path.name + ".revoked"))
        return name
    raise KeySetInvalidError(f"no key {keyid} in {directory}: check `staffel keys list`")


def set_threshold(directory: Path, name: str, threshold: int) -> None:
    """Sets how many keys of role ``name`` must sign.

    Raises:
        KeySetInvalidError: The role is unknown or has fewer keys than ``threshold``.
    """
    roles, encrypted = read_index(directory)
    if name not in roles or not 1 <= threshold <= len(roles[name].keys):
        raise KeySetInvalidError(
            f"cannot set a threshold of {threshold} for {name!r}: the role must exist and "
            f"hold at least that many keys"
        )
    roles[name] = RoleKeys(threshold, roles[name].keys, roles[name].paths)
    _write_index(directory, roles, encrypted)


def write_new_key(
    directory: Path, file: str, algorithm: str, passphrase: bytes | None, *, offline: bool
) -> KeyEntry:
    """Generates a private key into ``directory/file`` (mode 0600) and returns its entry."""
    private_key = _generate(algorithm)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_atomically(directory / file, pem, mode=0o600)
    return KeyEntry(file, SSlibKey.from_crypto(private_key.public_key()), offline=offline)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the whole new one.

    A temporary file in the same directory is written, fsynced and renamed over
    ``path``; the directory is fsynced so that the rename survives a power cut.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_index(directory: Path, roles: dict[str, RoleKeys], encrypted: bool) -> None:
    algorithm = "mixed"
    write_atomically(
        directory / INDEX_NAME,
        index_bytes(roles, algorithm=algorithm, encrypted=encrypted),
        mode=0o644,
    )


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise KeyToolError(
            f"unknown key algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}"
        )


def _generate(algorithm: str) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()
