"""Fleet selectors: which vehicles a campaign or a listing is about, as SQL conditions."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlmodel import col

from server.errors import InvalidArgumentError
from server.fleet.models import Ecu, Vehicle
from server.releases.models import Image
from server.validation import check_name, check_vin

MAX_SELECTOR_VINS = 10_000
MAX_SELECTOR_VALUES = 100


def tags_column_value(tags: tuple[str, ...] | list[str]) -> str:
    """The stored form of a set of tags: ``,a,b,`` (sorted, each once)."""
    return "," + "".join(f"{tag}," for tag in sorted(set(tags)))


def tags_from_column(value: str) -> tuple[str, ...]:
    """The tags of the stored form ``,a,b,``."""
    return tuple(tag for tag in value.split(",") if tag)


@dataclass(frozen=True)
class FleetSelector:
    """Vehicles by model, VINs, regions, sites, tags (all of them) and installed images."""

    vehicle_model: str = ""
    vins: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    installed_images: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raises InvalidArgumentError unless every value is well formed."""
        if self.vehicle_model:
            check_name(self.vehicle_model, "vehicle model")
        if len(self.vins) > MAX_SELECTOR_VINS:
            raise InvalidArgumentError(f"a selector lists at most {MAX_SELECTOR_VINS} VINs")
        for vin in self.vins:
            check_vin(vin)
        for what, values in (
            ("region", self.regions),
            ("site", self.sites),
            ("tag", self.tags),
            ("installed image", self.installed_images),
        ):
            if len(values) > MAX_SELECTOR_VALUES:
                raise InvalidArgumentError(
                    f"a selector lists at most {MAX_SELECTOR_VALUES} values of {what}"
                )
            for value in values:
                check_name(value, what)

    def conditions(self) -> list[ColumnElement[bool]]:
        """SQL conditions over ``fleet_vehicle`` that pick exactly the selected vehicles."""
        where: list[ColumnElement[bool]] = []
        if self.vehicle_model:
            where.append(col(Vehicle.model) == self.vehicle_model)
        if self.vins:
            where.append(col(Vehicle.vin).in_(self.vins))
        if self.regions:
            where.append(col(Vehicle.region).in_(self.regions))
        if self.sites:
            where.append(col(Vehicle.site).in_(self.sites))
        where.extend(col(Vehicle.tags).contains(f",{tag},") for tag in self.tags)
        if self.installed_images:
            where.append(
                exists(
                    select(col(Ecu.serial))
                    .join(Image, col(Image.sha256) == col(Ecu.installed_sha256))
                    .where(
                        and_(
                            col(Ecu.vin) == col(Vehicle.vin),
                            or_(*(col(Image.target_name) == n for n in self.installed_images)),
                        )
                    )
                )
            )
        return where

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FleetSelector:
        """The selector stored by :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        return cls(
            vehicle_model=data.get("vehicle_model", ""),
            **{
                key: tuple(data.get(key, ()))
                for key in ("vins", "regions", "sites", "tags", "installed_images")
            },
        )
