"""``staffel``: images, bundles, fleet and campaigns from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from staffel.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
)

from keys import cli as keys_cli

DEFAULT_SERVER = "127.0.0.1:50051"
UPLOAD_CHUNK_BYTES = 1024 * 1024
RPC_TIMEOUT_SECONDS = 30.0


class CliError(Exception):
    """A mistake in the command line, reported without a traceback."""


def _channel(args: argparse.Namespace) -> grpc.Channel:
    return grpc.insecure_channel(args.server)


def _print(args: argparse.Namespace, message: object, human: str) -> None:
    if args.json:
        print(json.dumps(MessageToDict(message), indent=2))  # type: ignore[arg-type]
    else:
        print(human)


def _upload_chunks(args: argparse.Namespace, path: Path) -> Iterator[release_pb2.UploadImageChunk]:
    yield release_pb2.UploadImageChunk(
        header=release_pb2.ImageHeader(
            name=args.name,
            version=args.version,
            hardware_id=args.hardware_id,
            release_counter=args.release_counter,
        )
    )
    total = path.stat().st_size
    sent = 0
    with path.open("rb") as image:
        while chunk := image.read(UPLOAD_CHUNK_BYTES):
            sent += len(chunk)
            if not args.json and total > 8 * UPLOAD_CHUNK_BYTES:
                print(
                    f"\ruploading {sent * 100 // total:3d}% of {total} bytes",
                    end="",
                    file=sys.stderr,
                )
            yield release_pb2.UploadImageChunk(data=chunk)
    if not args.json and total > 8 * UPLOAD_CHUNK_BYTES:
        print(file=sys.stderr)


def image_upload(args: argparse.Namespace) -> int:
    """Uploads an image file and publishes it in the Image repository."""
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path} is not a file")
    with _channel(args) as channel:
        image = release_pb2_grpc.ReleaseServiceStub(channel).UploadImage(_upload_chunks(args, path))
    _print(
        args,
        image,
        f"published {image.target_name} ({image.length} bytes, sha256 {image.sha256[:16]}…) "
        f"for {image.hardware_id}",
    )
    return 0


def image_list(args: argparse.Namespace) -> int:
    """Lists the published images."""
    with _channel(args) as channel:
        answer = release_pb2_grpc.ReleaseServiceStub(channel).ListImages(
            release_pb2.ListImagesRequest(), timeout=RPC_TIMEOUT_SECONDS
        )
    rows = [f"{'IMAGE':<32} {'HARDWARE':<16} {'COUNTER':>8} {'BYTES':>12}  SHA256"]
    rows += [
        f"{i.target_name:<32} {i.hardware_id:<16} {i.release_counter:>8} {i.length:>12}  "
        f"{i.sha256[:16]}…"
        for i in answer.images
    ]
    _print(args, answer, "\n".join(rows))
    return 0


def bundle_create(args: argparse.Namespace) -> int:
    """Creates a bundle of published images for one vehicle model."""
    with _channel(args) as channel:
        bundle = release_pb2_grpc.ReleaseServiceStub(channel).CreateBundle(
            release_pb2.CreateBundleRequest(
                name=args.name, vehicle_model=args.model, image_target_names=args.images
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    names = ", ".join(i.target_name for i in bundle.images)
    _print(
        args,
        bundle,
        f"bundle {bundle.bundle_id} ({bundle.name}) for {bundle.vehicle_model}: {names}",
    )
    return 0


def _parse_ecu(text: str) -> fleet_pb2.Ecu:
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "primary"):
        raise CliError(f"--ecu {text!r}: expected SERIAL:HARDWARE_ID[:primary]")
    return fleet_pb2.Ecu(serial=parts[0], hardware_id=parts[1], primary=len(parts) == 3)


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def fleet_provision(args: argparse.Namespace) -> int:
    """Registers a vehicle and writes the roots it must pin into --out."""
    ecus = [_parse_ecu(text) for text in args.ecu]
    with _channel(args) as channel:
        answer = fleet_pb2_grpc.FleetServiceStub(channel).ProvisionVehicle(
            fleet_pb2.ProvisionVehicleRequest(vin=args.vin, model=args.model, ecus=ecus),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_private(out / "image-root.json", answer.image_root)
    _write_private(out / "director-root.json", answer.director_root)
    _print(
        args,
        answer.vehicle,
        f"provisioned {answer.vehicle.vin} ({answer.vehicle.model}, {len(ecus)} ECU(s)); "
        f"pinned roots written to {out}",
    )
    return 0


_STATE_NAMES = {
    value: name.removeprefix("CAMPAIGN_STATE_").lower()
    for name, value in campaign_pb2.CampaignState.items()
}
_ASSIGNMENT_NAMES = {
    value: name.removeprefix("ASSIGNMENT_STATE_").lower()
    for name, value in campaign_pb2.AssignmentState.items()
}


def campaign_summary(campaign: campaign_pb2.Campaign) -> str:
    """One line, e.g. ``campaign c1 (running): 3 vehicles, 2 committed, 1 rolled back``."""
    counts = campaign.counts
    parts = [
        f"{n} {label}"
        for n, label in (
            (counts.committed, "committed"),
            (counts.rolled_back, "rolled back"),
            (counts.failed, "failed"),
            (counts.in_progress, "in progress"),
            (counts.pending, "pending"),
        )
        if n
    ]
    return (
        f"campaign {campaign.campaign_id} ({_STATE_NAMES[campaign.state]}): "
        f"{counts.total} vehicles, {', '.join(parts) or 'no assignments'}"
    )


def _campaign_table(campaign: campaign_pb2.Campaign) -> str:
    rows = [campaign_summary(campaign), f"{'VIN':<18} {'STATE':<12} LAST EVENT"]
    rows += [
        f"{a.vin:<18} {_ASSIGNMENT_NAMES[a.state]:<12} {a.last_event}" for a in campaign.assignments
    ]
    return "\n".join(rows)


def campaign_create(args: argparse.Namespace) -> int:
    """Creates a draft campaign."""
    with _channel(args) as channel:
        campaign = campaign_pb2_grpc.CampaignServiceStub(channel).CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                name=args.name,
                bundle_id=args.bundle,
                selector=campaign_pb2.FleetSelector(vehicle_model=args.model, vins=args.vin or []),
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    _print(args, campaign, f"created campaign {campaign.campaign_id} ({campaign.name}), draft")
    return 0


def campaign_start(args: argparse.Namespace) -> int:
    """Starts a draft campaign."""
    with _channel(args) as channel:
        campaign = campaign_pb2_grpc.CampaignServiceStub(channel).StartCampaign(
            campaign_pb2.StartCampaignRequest(campaign_id=args.campaign_id),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    _print(args, campaign, campaign_summary(campaign))
    return 0


def campaign_status(args: argparse.Namespace) -> int:
    """Shows a campaign's counts and each vehicle's progress (refreshing with --watch)."""
    with _channel(args) as channel:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        while True:
            campaign = stub.GetCampaign(
                campaign_pb2.GetCampaignRequest(campaign_id=args.campaign_id),
                timeout=RPC_TIMEOUT_SECONDS,
            )
            _print(args, campaign, _campaign_table(campaign))
            if not args.watch or campaign.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED:
                return 0
            time.sleep(args.interval)
            if not args.json:
                print()


def build_parser() -> argparse.ArgumentParser:
    """The full ``staffel`` command line."""
    parser = argparse.ArgumentParser(prog="staffel", description="Staffel release management.")
    parser.add_argument(
        "--server",
        default=os.environ.get("STAFFEL_SERVER", DEFAULT_SERVER),
        help="server gRPC address HOST:PORT (env STAFFEL_SERVER)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    keys_cli.add_parser(commands)

    image = commands.add_parser("image", help="ECU images").add_subparsers(
        dest="action", required=True
    )
    upload = image.add_parser("upload", help="upload and publish an image")
    upload.add_argument("file")
    upload.add_argument("--name", required=True)
    upload.add_argument("--version", required=True)
    upload.add_argument("--hardware-id", required=True)
    upload.add_argument("--release-counter", type=int, required=True)
    upload.set_defaults(func=image_upload)
    image.add_parser("list", help="list published images").set_defaults(func=image_list)

    bundle = commands.add_parser("bundle", help="bundles of images").add_subparsers(
        dest="action", required=True
    )
    create_bundle = bundle.add_parser("create", help="group images for a vehicle model")
    create_bundle.add_argument("--name", required=True)
    create_bundle.add_argument("--model", required=True)
    create_bundle.add_argument("images", nargs="+", metavar="IMAGE", help="target names")
    create_bundle.set_defaults(func=bundle_create)

    fleet = commands.add_parser("fleet", help="the fleet registry").add_subparsers(
        dest="action", required=True
    )
    provision = fleet.add_parser("provision", help="register a vehicle, write its pinned roots")
    provision.add_argument("--vin", required=True)
    provision.add_argument("--model", required=True)
    provision.add_argument(
        "--ecu", action="append", required=True, help="SERIAL:HARDWARE_ID[:primary], repeatable"
    )
    provision.add_argument(
        "--out", required=True, help="folder for image-root.json, director-root.json"
    )
    provision.set_defaults(func=fleet_provision)

    campaign = commands.add_parser("campaign", help="campaigns").add_subparsers(
        dest="action", required=True
    )
    create = campaign.add_parser("create", help="create a draft campaign")
    create.add_argument("--name", required=True)
    create.add_argument("--bundle", required=True, help="bundle id, e.g. b1")
    create.add_argument("--model", default="", help="vehicle model (default: the bundle's)")
    create.add_argument("--vin", action="append", help="restrict to these VINs, repeatable")
    create.set_defaults(func=campaign_create)
    start = campaign.add_parser("start", help="start a draft campaign")
    start.add_argument("campaign_id")
    start.set_defaults(func=campaign_start)
    status = campaign.add_parser("status", help="progress of a campaign")
    status.add_argument("campaign_id")
    status.add_argument("--watch", action="store_true", help="refresh until completed")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    status.set_defaults(func=campaign_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``staffel``."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except grpc.RpcError as error:
        print(f"staffel: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except CliError as error:
        print(f"staffel: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
