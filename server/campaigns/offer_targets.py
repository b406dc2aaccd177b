"""The Director targets of an offer: which image each of a vehicle's ECUs is offered.

The check-in and the pre-signer compute them alike (``server/campaigns/checkin.py``,
``server/campaigns/presign.py``), so that metadata signed ahead is the metadata a check-in
would sign.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from server.campaigns.checkin_statements import LOAD_BUNDLE, LOAD_IMAGES
from server.fleet.registry import EcuSpec
from server.repository.director import DirectorTarget


@dataclass(frozen=True)
class _BundleImage:
    target_name: str
    sha256: str
    length: int
    hardware_id: str


def _image_of(row: Any) -> _BundleImage:
    return _BundleImage(row.target_name, row.sha256, row.length, row.hardware_id)


# A bundle never changes once created (nor does an image), so each process reads a
# bundle's images once per database; bounded, and dropped with the database's engine.
_BUNDLES: weakref.WeakKeyDictionary[Engine, dict[int, tuple[_BundleImage, ...]]] = (
    weakref.WeakKeyDictionary()
)
_MAX_BUNDLES = 256  # per database


def _bundle_images(
    engine: Engine, connect: Callable[[], Connection], bundle_id: int
) -> tuple[_BundleImage, ...]:
    cache = _BUNDLES.setdefault(engine, {})
    images = cache.get(bundle_id)
    if images is None:
        images = tuple(
            _image_of(row) for row in connect().execute(LOAD_BUNDLE, {"bundle_id": bundle_id})
        )
        if len(cache) >= _MAX_BUNDLES:
            cache.clear()
        cache[bundle_id] = images
    return images


def offer_targets(
    connect: Callable[[], Connection],
    *,
    engine: Engine,
    targets: str,
    bundle_id: int,
    ecus: Sequence[EcuSpec],
) -> list[DirectorTarget]:
    """The Director targets an offer of an assignment names for a vehicle's ECUs.

    Args:
        connect: The connection that reads the images, called only when they are not
            cached (a bundle's images are read once per process and ``engine``).
        engine: The database's engine, whose cache of bundles is used.
        targets: The assignment's own targets (JSON, ECU serial to target name: a
            rollback's), or empty for the campaign's bundle.
        bundle_id: The campaign's bundle, matched to ECUs by hardware id.
        ecus: The vehicle's registered ECUs.
    """
    pairs: list[tuple[_BundleImage, EcuSpec]]
    if targets:
        wanted: dict[str, str] = json.loads(targets)
        names = sorted(set(wanted.values()))
        images = {
            row.target_name: _image_of(row)
            for row in connect().execute(LOAD_IMAGES, {"names": names})
        }
        pairs = [(images[wanted[e.serial]], e) for e in ecus if wanted.get(e.serial) in images]
    else:
        pairs = [
            (image, ecu)
            for image in _bundle_images(engine, connect, bundle_id)
            for ecu in ecus
            if ecu.hardware_id == image.hardware_id
        ]
    return [
        DirectorTarget(
            target_name=image.target_name,
            sha256=image.sha256,
            length=image.length,
            ecu_serial=ecu.serial,
            hardware_id=ecu.hardware_id,
        )
        for image, ecu in pairs
    ]
