"""Uptane full verification over python-tuf's ngclient: the I/O shell around policy.py.

Both repositories are verified from the roots pinned at provisioning: ngclient is always
bootstrapped with the pinned root, and walks the cached and remote root chain from there,
so the pinned root stays the trust anchor even after a rotation.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from client.config import EcuConfig
from client.errors import (
    DownloadError,
    StateError,
    TransferInterruptedError,
    VerificationError,
)
from client.images import Image
from client.uptane.fetcher import DirectorFetcher, DirectorMetadata, HttpFetcher
from client.uptane.policy import check_agreement, select_director_image

logger = logging.getLogger(__name__)

_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (
        tuf_errors.ExpiredMetadataError,
        "freeze attack: the metadata has expired (a stale relay, a replayed file, or a "
        "wrong clock)",
    ),
    (
        tuf_errors.UnsignedMetadataError,
        "forged metadata: not signed by a threshold of trusted keys (too few signatures, "
        "or keys that were rotated out or revoked)",
    ),
    (
        tuf_errors.LengthOrHashMismatchError,
        "arbitrary software or mix-and-match attack: not the file the signed metadata names",
    ),
    (
        tuf_errors.DownloadLengthMismatchError,
        "endless data attack: the file is larger than the signed or configured limit",
    ),
)


def _explain(exc: Exception) -> str:
    """Name the attack that python-tuf's refusal points at, then its own words."""
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        text = str(exc)
        # A file whose version differs from what the snapshot (or timestamp) names was
        # mixed from another repository state; a version below the trusted one rolls back.
        if text.startswith("Expected snapshot") or ", got v" in text:
            return f"mix-and-match attack: metadata from different versions: {text}"
        return f"rollback attack: older metadata than the vehicle already trusts: {text}"
    for error_type, meaning in _REFUSALS:
        if isinstance(exc, error_type):
            return f"{meaning}: {exc}"
    return str(exc) or type(exc).__name__


class UptaneVerifier:
    """Verifies an update offer against the Director and the Image repository."""

    def __init__(
        self,
        *,
        state_dir: Path,
        repo_url: str,
        image_root: Path,
        director_root: Path,
        timeout_seconds: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Create a verifier whose metadata caches live in ``state_dir``.

        Args:
            state_dir: Holds ``director-metadata/`` and ``image-metadata/``.
            repo_url: The relay's (or server's) HTTP base URL.
            image_root: The Image repository root pinned at provisioning.
            director_root: The Director root pinned at provisioning.
            timeout_seconds: Connect timeout and longest silence of metadata downloads.
            ssl_context: For an https ``repo_url``: the fleet CA and the vehicle's
                certificate (see ``client.tls``).
        """
        self._director_dir = state_dir / "director-metadata"
        self._image_dir = state_dir / "image-metadata"
        self._repo_url = repo_url.rstrip("/")
        self._image_root = image_root
        self._director_root = director_root
        self._timeout_seconds = timeout_seconds
        self._ssl_context = ssl_context

    def verify(
        self,
        director_metadata: DirectorMetadata,
        *,
        vin: str,
        ecu: EcuConfig,
        release_counter_floor: int,
    ) -> Image:
        """Run Uptane full verification for the primary ECU.

        Args:
            director_metadata: The Director metadata from the ``CheckIn`` answer.
            vin: This vehicle's VIN.
            ecu: The primary ECU.
            release_counter_floor: The release counter of the installed image.

        Returns:
            The image both repositories agree on.

        Raises:
            VerificationError: Metadata was refused, or the repositories disagree.
            TransferInterruptedError: Metadata could not be fetched now (network).
            DownloadError: A metadata file was longer than allowed.
            StateError: The pinned roots or the metadata caches cannot be read or written.
        """
        for role in ("timestamp", "snapshot", "targets"):
            if not getattr(director_metadata, role):
                raise VerificationError(f"the update offer carries no Director {role}")
        director_target = select_director_image(
            self._director_targets(director_metadata), vin=vin, ecu=ecu
        )
        image_target = self._image_target(director_target.path)
        image = check_agreement(
            director_target,
            image_target,
            hardware_id=ecu.hardware_id,
            release_counter_floor=release_counter_floor,
        )
        logger.info("Director and Image repository agree on %s", image.target)
        return image

    def _http_fetcher(self) -> FetcherInterface:
        return HttpFetcher(
            timeout_seconds=self._timeout_seconds,
            user_agent="staffel-client",
            ssl_context=self._ssl_context,
        )

    def _director_targets(self, director_metadata: DirectorMetadata) -> Targets:
        fetcher = DirectorFetcher(director_metadata, self._http_fetcher())
        with _translated("Director"):
            updater = self._updater(self._director_dir, "director", self._director_root, fetcher)
            updater.refresh()
            # After a successful refresh ngclient's cached targets.json is the trusted one.
            trusted = Metadata[Targets].from_bytes(
                (self._director_dir / "targets.json").read_bytes()
            )
        return trusted.signed

    def _image_target(self, name: str) -> TargetFile | None:
        with _translated("Image repository"):
            updater = self._updater(
                self._image_dir, "image", self._image_root, self._http_fetcher()
            )
            updater.refresh()
            target: TargetFile | None = updater.get_targetinfo(name)
        return target

    def _updater(
        self, metadata_dir: Path, repository: str, pinned_root: Path, fetcher: FetcherInterface
    ) -> Updater:
        try:
            root = pinned_root.read_bytes()
        except OSError as exc:
            raise StateError(
                f"cannot read the pinned {repository} root {pinned_root}: {exc}; "
                "the vehicle must be reprovisioned"
            ) from exc
        metadata_dir.mkdir(parents=True, exist_ok=True)
        return Updater(
            str(metadata_dir),
            f"{self._repo_url}/{repository}/metadata/",
            fetcher=fetcher,
            config=UpdaterConfig(app_user_agent="staffel-client"),
            bootstrap=root,
        )


@contextmanager
def _translated(repository: str) -> Iterator[None]:
    """Translate python-tuf and OS errors of one repository into the client's error tree.

    Refused metadata (signatures, hashes, expiry, rollback, a file longer than allowed) is
    a verification failure; a network failure (a timeout, a refused connection, an HTTP
    error status) is transient: the offer is verified again at the next check-in.
    """
    try:
        yield
    except tuf_errors.RepositoryError as exc:
        raise VerificationError(f"{repository} metadata refused: {_explain(exc)}") from exc
    except tuf_errors.DownloadLengthMismatchError as exc:
        raise DownloadError(f"cannot fetch {repository} metadata: {_explain(exc)}") from exc
    except tuf_errors.DownloadError as exc:
        raise TransferInterruptedError(
            f"cannot fetch {repository} metadata now ({_explain(exc)}); "
            "retrying at the next check-in"
        ) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise TransferInterruptedError(
            f"cannot fetch {repository} metadata now ({exc}); retrying at the next check-in"
        ) from exc
    except OSError as exc:
        raise StateError(f"cannot use the {repository} metadata cache: {exc}") from exc
