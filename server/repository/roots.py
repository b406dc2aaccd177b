"""Root metadata of either repository: the first root, and the ceremony's import/export.

A root is stored as ``N.root.json`` (``RepoMetadata``) and never changed afterwards; a
new root enters only when a threshold of the old and of the new root keys signed it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlmodel import Session
from tuf.api.metadata import Metadata, Root

from keys.ceremony import check_root_update, next_root, to_bytes
from keys.errors import CeremonyError, KeyToolError
from keys.keyset import KeySet
from server.errors import FailedPreconditionError, RepositoryError
from server.repository.models import RepoMetadata, latest_root_row
from server.repository.signing import new_root, sign


def first_root_file(keys: KeySet, repo: str) -> Path:
    """Where ``staffel keys init`` leaves root version 1 when the root keys are offline."""
    return keys.directory / f"{repo}.1.root.json"


def first_root(keys: KeySet, repo: str, *, expires: datetime) -> bytes:
    """Root version 1: the one signed at ``keys init``, or a new one signed with online keys.

    Raises:
        RepositoryError: The root keys are offline and no signed root version 1 exists.
    """
    path = first_root_file(keys, repo)
    if path.exists():
        return path.read_bytes()
    try:
        return sign(new_root(keys, repo, expires=expires), keys, repo)
    except RepositoryError as error:
        raise RepositoryError(
            f"{error}; with offline root keys, `staffel keys init` writes {path.name}: "
            f"copy it into {keys.directory}"
        ) from error


def trusted_root(session: Session, repo: str) -> Metadata[Root]:
    """The newest stored root of ``repo``.

    Raises:
        RepositoryError: The repository is not initialized.
    """
    row = latest_root_row(session, repo)
    if row is None:
        raise RepositoryError(
            f"the {repo} repository is not initialized: start the server once (it creates "
            f"the repository)"
        )
    return Metadata[Root].from_bytes(row.data)


def export_next_root(session: Session, keys: KeySet, repo: str) -> bytes:
    """The unsigned successor of the trusted root, trusting the key set's keys."""
    current = trusted_root(session, repo).signed
    return to_bytes(Metadata(next_root(current, keys, repo)))


def add_root(session: Session, repo: str, data: bytes) -> Metadata[Root]:
    """Stores a signed new root after checking that it may follow the trusted one.

    Raises:
        FailedPreconditionError: The new root is malformed, not the next version, or
            lacks a threshold of old or new root signatures.
    """
    trusted = trusted_root(session, repo)
    try:
        new = Metadata[Root].from_bytes(data)
        if not isinstance(new.signed, Root):
            raise CeremonyError(f"the file holds {new.signed.type} metadata, not a root")
        check_root_update(trusted, new)
    except (KeyToolError, ValueError) as error:
        raise FailedPreconditionError(f"new {repo} root refused: {error}") from error
    filename = f"{new.signed.version}.root.json"
    session.add(RepoMetadata(repo=repo, filename=filename, version=new.signed.version, data=data))
    return new
