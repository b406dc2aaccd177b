"""Publishing images and grouping them into bundles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from server.auth.roles import Principal
from server.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from server.releases.models import Bundle, BundleImage, Image
from server.repository.blobs import BlobInfo
from server.repository.image_repo import ImageRepository
from server.store import Database
from server.validation import check_name

MAX_IMAGES_PER_BUNDLE = 64
BUNDLE_PREFIX = "b"
DEFAULT_BUNDLE_VERSION = "1"


@dataclass(frozen=True)
class ImageHeader:
    """What a release manager says about an image before its bytes."""

    name: str
    version: str
    hardware_id: str
    release_counter: int
    ecu_type: str = ""

    @property
    def target_name(self) -> str:
        """The image's name in the TUF Image repository."""
        return f"{self.name}-{self.version}"

    def validate(self) -> None:
        """Raises InvalidArgumentError unless every field is well formed."""
        check_name(self.name, "image name")
        check_name(self.version, "image version")
        check_name(self.hardware_id, "hardware id")
        if self.ecu_type:
            check_name(self.ecu_type, "ECU type")
        if not 0 <= self.release_counter < 2**63:
            raise InvalidArgumentError("release counter must be between 0 and 2^63-1")


@dataclass(frozen=True)
class BundleRecord:
    """A bundle with its images, detached from any session."""

    bundle_id: str
    name: str
    vehicle_model: str
    images: tuple[Image, ...]
    created_at: datetime
    version: str = DEFAULT_BUNDLE_VERSION


def bundle_public_id(bundle_id: int) -> str:
    """The id shown to users, e.g. ``b3``."""
    return f"{BUNDLE_PREFIX}{bundle_id}"


def parse_bundle_id(public_id: str) -> int:
    """The row id behind ``b3``; InvalidArgumentError for anything else."""
    digits = public_id.removeprefix(BUNDLE_PREFIX)
    if not public_id.startswith(BUNDLE_PREFIX) or not digits.isdigit() or len(digits) > 18:
        raise InvalidArgumentError(f"bundle id {public_id!r} is not valid (expected e.g. 'b1')")
    return int(digits)


def check_image_is_new(database: Database, header: ImageHeader) -> None:
    """Fails early, before any byte is stored, when the image cannot be published."""
    header.validate()
    with database.session() as session:
        if session.get(Image, header.target_name) is not None:
            raise AlreadyExistsError(
                f"image {header.target_name} exists already: pick a new version"
            )
        newest = session.exec(
            select(Image.release_counter)
            .where(Image.name == header.name)
            .order_by(col(Image.release_counter).desc())
            .limit(1)
        ).first()
        if newest is not None and header.release_counter <= newest:
            raise InvalidArgumentError(
                f"release counter {header.release_counter} of {header.name} must exceed "
                f"{newest}, the highest published so far"
            )


def register_image(
    database: Database,
    image_repo: ImageRepository,
    header: ImageHeader,
    blob: BlobInfo,
    *,
    uploader: Principal,
) -> Image:
    """Adds a stored blob to the Image repository and the catalog.

    The catalog records who uploaded the image (``uploader``) and who signed the
    targets metadata version that added it, and when.
    """
    check_image_is_new(database, header)
    if blob.length == 0:
        raise InvalidArgumentError("an image must not be empty")
    signing = image_repo.add_image(
        target_name=header.target_name,
        sha256=blob.sha256,
        length=blob.length,
        custom={
            "name": header.name,
            "version": header.version,
            "hardware_ids": [header.hardware_id],
            "release_counter": header.release_counter,
            "ecu_type": header.ecu_type,
        },
    )
    image = Image(
        target_name=header.target_name,
        name=header.name,
        version=header.version,
        hardware_id=header.hardware_id,
        release_counter=header.release_counter,
        ecu_type=header.ecu_type,
        sha256=blob.sha256,
        length=blob.length,
        uploaded_at=datetime.now(UTC).replace(microsecond=0),
        uploaded_by=uploader.name,
        uploader_role=uploader.role.value,
        signed_role=signing.role,
        signed_version=signing.version,
        signed_keyids=",".join(signing.keyids),
        signed_at=signing.signed_at,
    )
    with database.session() as session:
        session.add(image)
        session.flush()
        session.expunge(image)
    return image


def list_images(database: Database) -> list[Image]:
    """Every published image, newest first."""
    with database.session() as session:
        return list(session.exec(select(Image).order_by(col(Image.uploaded_at).desc())).all())


def create_bundle(
    database: Database,
    *,
    name: str,
    vehicle_model: str,
    target_names: Sequence[str],
    version: str = "",
) -> BundleRecord:
    """Groups published images into a bundle for one vehicle model (one per hardware id).

    A name and version are created once. Asking again with the same model and images
    returns the existing bundle; with anything else it fails, since a bundle never changes.

    Raises:
        InvalidArgumentError: A field is malformed, or two images share a hardware id.
        NotFoundError: An image is not published.
        AlreadyExistsError: The name and version exist with another model or images.
    """
    version = version or DEFAULT_BUNDLE_VERSION
    check_name(name, "bundle name")
    check_name(version, "bundle version")
    check_name(vehicle_model, "vehicle model")
    if not target_names:
        raise InvalidArgumentError("a bundle needs at least one image")
    if len(target_names) > MAX_IMAGES_PER_BUNDLE:
        raise InvalidArgumentError(f"a bundle holds at most {MAX_IMAGES_PER_BUNDLE} images")
    if len(set(target_names)) != len(target_names):
        raise InvalidArgumentError("a bundle lists each image once")
    existing = _existing_bundle(database, name, version, vehicle_model, target_names)
    if existing is not None:
        return existing
    try:
        return _insert_bundle(database, name, version, vehicle_model, target_names)
    except IntegrityError:
        # Created at the same moment by another call: same answer as if it came first.
        existing = _existing_bundle(database, name, version, vehicle_model, target_names)
        if existing is None:
            raise
        return existing


def _insert_bundle(
    database: Database, name: str, version: str, vehicle_model: str, target_names: Sequence[str]
) -> BundleRecord:
    with database.session() as session:
        images = session.exec(select(Image).where(col(Image.target_name).in_(target_names))).all()
        missing = sorted(set(target_names) - {i.target_name for i in images})
        if missing:
            raise NotFoundError(f"no such image(s): {', '.join(missing)}; upload them first")
        hardware_ids = [i.hardware_id for i in images]
        if len(set(hardware_ids)) != len(hardware_ids):
            raise InvalidArgumentError("a bundle holds one image per hardware id")
        bundle = Bundle(
            name=name,
            version=version,
            vehicle_model=vehicle_model,
            created_at=datetime.now(UTC).replace(microsecond=0),
        )
        session.add(bundle)
        session.flush()
        assert bundle.id is not None  # noqa: S101 - set by the flush
        for target_name in target_names:
            session.add(BundleImage(bundle_id=bundle.id, target_name=target_name))
        session.flush()
        return _record(session, bundle)


def _existing_bundle(
    database: Database, name: str, version: str, vehicle_model: str, target_names: Sequence[str]
) -> BundleRecord | None:
    """The bundle ``name`` ``version`` if it holds exactly this; None if it does not exist.

    Raises:
        AlreadyExistsError: It exists with another vehicle model or other images.
    """
    with database.session() as session:
        bundle = session.exec(
            select(Bundle).where(Bundle.name == name, Bundle.version == version)
        ).first()
        if bundle is None:
            return None
        record = _record(session, bundle)
    held = sorted(i.target_name for i in record.images)
    if record.vehicle_model != vehicle_model or held != sorted(target_names):
        raise AlreadyExistsError(
            f"bundle {name} version {version} exists already ({record.bundle_id}, for "
            f"{record.vehicle_model}: {', '.join(held)}) and bundles never change: create "
            f"it under a new version (--version)"
        )
    return record


def _record(session: Session, bundle: Bundle) -> BundleRecord:
    assert bundle.id is not None  # noqa: S101 - a stored bundle has its id
    return BundleRecord(
        bundle_id=bundle_public_id(bundle.id),
        name=bundle.name,
        vehicle_model=bundle.vehicle_model,
        images=tuple(load_bundle_images(session, bundle.id)),
        created_at=bundle.created_at,
        version=bundle.version,
    )


def list_bundles(database: Database) -> list[BundleRecord]:
    """Every bundle with its version and images, by name, then creation."""
    with database.session() as session:
        bundles = session.exec(select(Bundle).order_by(col(Bundle.name), col(Bundle.id))).all()
        return [_record(session, bundle) for bundle in bundles]


def load_bundle_images(session: Session, bundle_id: int) -> list[Image]:
    """The images of a bundle inside ``session``."""
    return list(
        session.exec(
            select(Image)
            .join(BundleImage, col(BundleImage.target_name) == col(Image.target_name))
            .where(BundleImage.bundle_id == bundle_id)
            .order_by(col(Image.target_name))
        ).all()
    )


def get_bundle(database: Database, public_id: str) -> BundleRecord:
    """The bundle with this id and its images."""
    bundle_id = parse_bundle_id(public_id)
    with database.session() as session:
        bundle = session.get(Bundle, bundle_id)
        if bundle is None:
            raise NotFoundError(f"bundle {public_id} does not exist")
        return _record(session, bundle)
