"""Errors of the Staffel server, one tree for every domain.

    StaffelError
    ├── InvalidArgumentError   input that can never succeed as sent
    ├── NotFoundError          names something that does not exist
    ├── AlreadyExistsError     would create something that exists
    ├── FailedPreconditionError  valid, but not in the current state
    ├── UnauthenticatedError   no valid token came with the call
    ├── PermissionDeniedError  the caller's role does not allow the call
    ├── RepositoryError        signing or metadata could not be produced
    └── SchemaError            the database's schema revision does not fit this server

The gRPC layer maps each class to one status code (``server.api.status``);
domain code raises these and never touches gRPC.
"""


class StaffelError(Exception):
    """Base of every error the server raises on purpose."""


class InvalidArgumentError(StaffelError):
    """The request is malformed; resending it unchanged cannot succeed."""


class NotFoundError(StaffelError):
    """The request names a vehicle, image, bundle or campaign that does not exist."""


class AlreadyExistsError(StaffelError):
    """The request would create something that already exists."""


class FailedPreconditionError(StaffelError):
    """The request is valid but not allowed in the current state."""


class RepositoryError(StaffelError):
    """TUF metadata could not be produced (missing keys, broken store)."""


class UnauthenticatedError(StaffelError):
    """The call carries no token, or one the server does not know (or that was revoked)."""


class PermissionDeniedError(StaffelError):
    """The caller is known, but their role (or the four-eyes rule) does not allow the call."""


class SchemaError(StaffelError):
    """The database is at a schema revision this server cannot run on (migrate, or upgrade)."""
