"""Roles and what each may call."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server.errors import InvalidArgumentError, PermissionDeniedError


class Role(enum.StrEnum):
    """What a token may do."""

    VIEWER = "viewer"
    RELEASE_MANAGER = "release_manager"
    APPROVER = "approver"
    ADMIN = "admin"

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named ``text``; InvalidArgumentError listing the valid names otherwise."""
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(role.value for role in cls)
            raise InvalidArgumentError(f"role {text!r} is not valid: use one of {names}") from None


class Permission(enum.Enum):
    """A class of calls."""

    READ = "read"
    MANAGE = "manage"  # images, bundles, fleet, campaign lifecycle
    APPROVE = "approve"
    ADMINISTER = "administer"  # tokens


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.RELEASE_MANAGER: frozenset({Permission.READ, Permission.MANAGE}),
    Role.APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    Role.ADMIN: frozenset(Permission),
}

# Services open to vehicles (they authenticate with their own keys), to probes, and to
# relays (they carry no token; a readiness report can only open or delay a wave at one site
# within the staging wait, never change what a vehicle installs).
PUBLIC_SERVICES = frozenset(
    {"staffel.v1.VehicleService", "staffel.v1.RelayService", "grpc.health.v1.Health"}
)

_READ_METHODS = frozenset(
    {
        "GetCampaign",
        "ListCampaigns",
        "WatchCampaign",
        "GetVehicle",
        "ListVehicles",
        "ListImages",
        "WhoAmI",
        "ListAudit",
    }
)
_SPECIAL = {"ApproveCampaign": Permission.APPROVE, "CreateToken": Permission.ADMINISTER}


def permission_for(method: str) -> Permission | None:
    """What a full gRPC method name (``/pkg.Service/Method``) needs; None for public ones.

    A method this table does not know needs ADMINISTER, so a new RPC is closed by default
    until it is classified here.
    """
    service, _, name = method.strip("/").partition("/")
    if service in PUBLIC_SERVICES:
        return None
    if name in _READ_METHODS:
        return Permission.READ
    if name in _SPECIAL:
        return _SPECIAL[name]
    if service in {
        "staffel.v1.CampaignService",
        "staffel.v1.FleetService",
        "staffel.v1.ReleaseService",
    }:
        return Permission.MANAGE
    return Permission.ADMINISTER


@dataclass(frozen=True)
class Principal:
    """Who makes a call."""

    name: str
    role: Role

    def require(self, permission: Permission, what: str) -> None:
        """Raises PermissionDeniedError unless the role grants ``permission``."""
        if permission not in _GRANTS[self.role]:
            allowed = ", ".join(r.value for r, grants in _GRANTS.items() if permission in grants)
            raise PermissionDeniedError(
                f"{self.name} ({self.role.value}) may not {what}; that needs the role {allowed}"
            )


# The engine acts on its own (gates, waves); its audit entries name it.
ENGINE = Principal(name="engine", role=Role.ADMIN)
