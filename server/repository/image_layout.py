"""How the Image repository's targets are laid out: top-level targets, ``bins``, bins.

    targets (offline-capable key)   delegates "*" to ──▶  bins (online key)
    bins                            delegates by hash (TAP 15 succinct roles) ──▶
    bin-000 … bin-3ff               the image targets, ~N/1024 each

A client that looks up one image reads targets, bins and one bin, so its refresh after
one more image is published costs timestamp + snapshot + one bin, whatever the size of
the repository. The bins role and the bins are signed by the online ``image.bins`` key.

Supplier delegations (Uptane) come first: the top-level targets delegate the target
names matching a supplier's glob ``paths`` to the role ``supplier-NAME`` (terminating,
listed before ``bins``), signed by the supplier's own key (``image.supplier-NAME``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Key,
    SuccinctRoles,
    TargetFile,
    Targets,
)

from keys.keyset import BINS_ROLE, KeySet

BIN_PREFIX: Final = "bin"
DEFAULT_BIN_BITS: Final = 10  # 1,024 bins: ~100 images each at 100,000 images


@dataclass(frozen=True)
class ImageTarget:
    """One image to publish.

    Attributes:
        target_name: ``NAME-VERSION``, unique in the repository.
        sha256: The image's SHA-256, lowercase hex.
        length: The image's size in bytes.
        custom: Uptane fields (name, version, hardware_ids, release_counter, ecu_type).
    """

    target_name: str
    sha256: str
    length: int
    custom: Mapping[str, Any]

    def target_file(self) -> TargetFile:
        """The TUF target entry."""
        return TargetFile(
            length=self.length,
            hashes={"sha256": self.sha256},
            path=self.target_name,
            unrecognized_fields={"custom": dict(self.custom)},
        )


@dataclass(frozen=True)
class Signing:
    """Who signed the targets metadata version that added an image, and when.

    Attributes:
        role: The delegated role whose metadata names the image, e.g. ``bin-03a``.
        version: That role's metadata version that added the image.
        keyids: The key ids whose signatures that version carries.
        signed_at: When it was signed (the repository's clock).
    """

    role: str
    version: int
    keyids: tuple[str, ...]
    signed_at: datetime


def bins_keys(keys: KeySet) -> dict[str, Key]:
    """The online keys that sign the bins role and the bins, by key id."""
    return {key.keyid: key for key in keys.public_keys("image", BINS_ROLE)}


def supplier_delegations(keys: KeySet) -> tuple[dict[str, Key], list[DelegatedRole]]:
    """The key set's supplier roles as terminating delegations, and their keys by key id."""
    keyring: dict[str, Key] = {}
    roles: list[DelegatedRole] = []
    for name, paths in keys.suppliers().items():
        supplier_keys = {key.keyid: key for key in keys.public_keys("image", name)}
        keyring.update(supplier_keys)
        roles.append(
            DelegatedRole(
                name=name,
                keyids=list(supplier_keys),
                threshold=keys.threshold("image", name),
                terminating=True,
                paths=list(paths),
            )
        )
    return keyring, roles


def top_level_targets(keys: KeySet, *, version: int, expires: datetime) -> Targets:
    """Top-level targets delegating to the suppliers first, then every path to ``bins``."""
    keyring, suppliers = supplier_delegations(keys)
    bins_keyring = bins_keys(keys)
    role = DelegatedRole(
        name=BINS_ROLE,
        keyids=list(bins_keyring),
        threshold=keys.threshold("image", BINS_ROLE),
        terminating=True,
        paths=["*"],
    )
    roles = {supplier.name: supplier for supplier in suppliers}
    roles[BINS_ROLE] = role
    return Targets(
        version=version,
        expires=expires,
        delegations=Delegations(keys={**keyring, **bins_keyring}, roles=roles),
    )


def with_suppliers(current: Targets, keys: KeySet) -> Targets | None:
    """``current`` with the key set's supplier delegations, or None when it has them.

    The bins delegation is kept as signed (a pending bins key rotation is the offline
    ceremony's business); only the supplier delegations are replaced.
    """
    delegation = bins_delegation(current)
    keyring, suppliers = supplier_delegations(keys)
    wanted = [(role.name, role.keyids, role.threshold, role.paths) for role in suppliers]
    held = [
        (role.name, role.keyids, role.threshold, role.paths) for role in supplier_roles(current)
    ]
    if wanted == held or current.delegations is None:
        return None
    bins_keyring = {keyid: current.delegations.keys[keyid] for keyid in delegation.keyids}
    roles = {supplier.name: supplier for supplier in suppliers}
    roles[BINS_ROLE] = delegation
    return Targets(
        version=current.version + 1,
        expires=current.expires,
        targets=current.targets,
        delegations=Delegations(keys={**keyring, **bins_keyring}, roles=roles),
    )


def supplier_roles(targets: Targets) -> list[DelegatedRole]:
    """The top-level targets' delegations to suppliers, in lookup order."""
    if targets.delegations is None or targets.delegations.roles is None:
        return []
    return [role for role in targets.delegations.roles.values() if role.name != BINS_ROLE]


def supplier_for(targets: Targets, target_name: str) -> str | None:
    """The supplier role the top-level targets delegate ``target_name`` to, or None."""
    for role in supplier_roles(targets):
        if role.is_delegated_path(target_name):
            return role.name
    return None


def bins_role(keys: KeySet, *, bit_length: int, version: int, expires: datetime) -> Targets:
    """The ``bins`` role: succinct hashed-bin delegations to ``bin-NNN``."""
    keyring = bins_keys(keys)
    succinct = SuccinctRoles(
        keyids=list(keyring),
        threshold=keys.threshold("image", BINS_ROLE),
        bit_length=bit_length,
        name_prefix=BIN_PREFIX,
    )
    return Targets(
        version=version,
        expires=expires,
        delegations=Delegations(keys=keyring, succinct_roles=succinct),
    )


def succinct_roles(bins: Targets) -> SuccinctRoles:
    """The hashed-bin delegation of a stored ``bins`` role."""
    if bins.delegations is None or bins.delegations.succinct_roles is None:
        raise ValueError("the bins role carries no succinct delegation")
    return bins.delegations.succinct_roles


def bins_delegation(targets: Targets) -> DelegatedRole:
    """The top-level targets' delegation to the ``bins`` role."""
    if targets.delegations is None or targets.delegations.roles is None:
        raise ValueError("the top-level targets delegate to no bins role")
    return targets.delegations.roles[BINS_ROLE]
