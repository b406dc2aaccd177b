"""Errors of the edge relay, drawn as a tree.

    StaffelError                      (server.errors)
    └── RelayError
        ├── RelayConfigError          the command line or config is out of bounds
        ├── ListenError               a listen address cannot be bound
        ├── InvalidPathError          a request names no valid blob or metadata file
        ├── CacheError                the cache directory cannot be written
        ├── AccessDeniedError         the peer is no vehicle of this site (or no fleet peer)
        └── UpstreamError             the upstream could not deliver
            ├── UpstreamNotFoundError     the upstream answered 404
            └── UpstreamUnavailableError  unreachable, timed out, bad status or bad bytes
                └── UpstreamInterruptedError  the connection failed; worth resuming

The HTTP routes map them to status codes in one place (``server.relay.http``):
``InvalidPathError`` 400, ``AccessDeniedError`` 403, ``UpstreamNotFoundError`` 404,
``UpstreamUnavailableError`` 502, ``CacheError`` 503.
"""

from server.errors import StaffelError


class RelayError(StaffelError):
    """Base of every error the relay raises on purpose."""


class RelayConfigError(RelayError):
    """The relay configuration is invalid; fix the named option and restart."""


class ListenError(RelayError):
    """A listen address cannot be bound; pick a free port or another interface."""


class InvalidPathError(RelayError):
    """The requested file name is malformed; the request can never succeed as sent."""


class CacheError(RelayError):
    """The cache directory cannot be written; check its permissions and free space."""


class UpstreamError(RelayError):
    """The upstream server did not deliver the requested file."""


class UpstreamNotFoundError(UpstreamError):
    """The upstream server has no such file."""


class UpstreamUnavailableError(UpstreamError):
    """The upstream could not be reached or sent something unusable; retry later."""


class UpstreamInterruptedError(UpstreamUnavailableError):
    """The connection to the upstream failed or was cut; a later Range request may resume."""


class AccessDeniedError(RelayError):
    """The peer may not be answered by this relay (HTTP 403, gRPC PERMISSION_DENIED).

    Attributes:
        reason: A short label for metrics: ``no_identity``, ``other_site``, ``foreign_vin``.
    """

    def __init__(self, reason: str, message: str) -> None:
        """An access refusal with its metrics label and an actionable message."""
        super().__init__(message)
        self.reason = reason
