"""The vehicle client's errors, one tree.

Foreign exceptions (python-tuf, urllib3, grpc, OSError) are translated into these once, at
the boundary where they occur, so the agent only ever handles the tree below::

    ClientError
    ├── ConfigError            the config file is missing, unreadable or invalid
    ├── StateError             local durable state (journal, outbox, boot state) is unusable
    ├── ServerError            the server (or relay) could not be reached or refused a call
    │   └── HeartbeatRefusedError  a heartbeat check-in was refused: sign a manifest instead
    └── UpdateError            an update failed before the boot state changed
        ├── DownloadError      the image or metadata could not be fetched completely
        │   └── TransferInterruptedError  the network failed mid-way; the download resumes later
        ├── VerificationError  Uptane verification or the image hash check failed
        └── InstallError       the image could not be written into the inactive slot
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the vehicle client raises on purpose."""


class ConfigError(ClientError):
    """The client's config file is missing, unreadable or invalid."""


class StateError(ClientError):
    """Local durable state (journal, event outbox, boot state) cannot be read or written."""


class ServerError(ClientError):
    """The server (or relay) could not be reached, or it refused a call."""


class HeartbeatRefusedError(ServerError):
    """The server did not take a heartbeat check-in (it holds no chain of the vehicle, or
    refused the link or the ECUs); a check-in with a signed manifest follows at once."""


class UpdateError(ClientError):
    """An update failed before the boot state changed; the active slot is untouched."""


class DownloadError(UpdateError):
    """An image or a metadata file could not be fetched completely."""


class TransferInterruptedError(DownloadError):
    """The network failed during a download; what arrived is kept and the next try resumes."""


class VerificationError(UpdateError):
    """Uptane verification or the image hash check refused the update."""


class InstallError(UpdateError):
    """The image could not be written into the inactive slot."""
