"""``staffel``: images, bundles, fleet and campaigns from the command line."""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import grpc
from google.protobuf.json_format import MessageToDict
from staffel.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    campaign_pb2,
    campaign_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
)

from keys import cli as keys_cli
from server.cli.ecu_keys import KeyPlacementError, ecu_public_keys

DEFAULT_SERVER = "127.0.0.1:50051"
UPLOAD_CHUNK_BYTES = 1024 * 1024
RPC_TIMEOUT_SECONDS = 30.0


class CliError(Exception):
    """A mistake in the command line, reported without a traceback."""


def _channel(args: argparse.Namespace) -> grpc.Channel:
    channel = grpc.insecure_channel(args.server)
    if not args.token:
        return channel
    return grpc.intercept_channel(channel, _BearerToken(args.token))


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer TOKEN`` to every call."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadata]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """Call details with our metadata added."""


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
            ecu_type=args.ecu_type,
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
    rows = [
        f"{'IMAGE':<32} {'HARDWARE':<16} {'COUNTER':>8} {'BYTES':>12}  {'SHA256':<17}  "
        f"{'UPLOADED BY':<28} {'UPLOADED AT':<20}  {'SIGNED BY':<28} SIGNED AT"
    ]
    rows += [
        f"{i.target_name:<32} {i.hardware_id:<16} {i.release_counter:>8} {i.length:>12}  "
        f"{i.sha256[:16]}…  {_uploader(i):<28} {_when(i, 'uploaded_at'):<20}  "
        f"{_signer(i):<28} {_when(i, 'signed_at')}"
        for i in answer.images
    ]
    _print(args, answer, "\n".join(rows))
    return 0


def _uploader(image: release_pb2.Image) -> str:
    return f"{image.uploaded_by} ({image.uploader_role})" if image.uploader_role else "unknown"


def _signer(image: release_pb2.Image) -> str:
    if not image.signed_role:
        return "unknown"
    keys = ",".join(k[:8] for k in image.signed_keyids)
    return f"{image.signed_role} v{image.signed_version} [{keys}]"


def _when(image: release_pb2.Image, field: Literal["uploaded_at", "signed_at"]) -> str:
    if not image.HasField(field):
        return "-"
    moment: datetime = getattr(image, field).ToDatetime(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def bundle_create(args: argparse.Namespace) -> int:
    """Creates a bundle of published images for one vehicle model."""
    with _channel(args) as channel:
        bundle = release_pb2_grpc.ReleaseServiceStub(channel).CreateBundle(
            release_pb2.CreateBundleRequest(
                name=args.name,
                vehicle_model=args.model,
                image_target_names=args.images,
                version=args.version,
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    names = ", ".join(i.target_name for i in bundle.images)
    _print(
        args,
        bundle,
        f"bundle {bundle.bundle_id} ({bundle.name} version {bundle.version}) for "
        f"{bundle.vehicle_model}: {names}",
    )
    return 0


def bundle_list(args: argparse.Namespace) -> int:
    """Lists the bundles with their versions."""
    with _channel(args) as channel:
        answer = release_pb2_grpc.ReleaseServiceStub(channel).ListBundles(
            release_pb2.ListBundlesRequest(), timeout=RPC_TIMEOUT_SECONDS
        )
    rows = [f"{'ID':<8} {'NAME':<24} {'VERSION':<12} {'MODEL':<16} IMAGES"]
    rows += [
        f"{b.bundle_id:<8} {b.name:<24} {b.version:<12} {b.vehicle_model:<16} "
        + ", ".join(i.target_name for i in b.images)
        for b in answer.bundles
    ]
    _print(args, answer, "\n".join(rows))
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
    """Registers a vehicle with its ECUs' public keys; writes keys and pinned roots to --out."""
    ecus = [_parse_ecu(text) for text in args.ecu]
    out = Path(args.out)
    try:
        public_keys = ecu_public_keys(out, [ecu.serial for ecu in ecus])
    except KeyPlacementError as error:
        raise CliError(str(error)) from error
    for ecu in ecus:
        ecu.public_key = public_keys[ecu.serial]
    with _channel(args) as channel:
        answer = fleet_pb2_grpc.FleetServiceStub(channel).ProvisionVehicle(
            fleet_pb2.ProvisionVehicleRequest(
                vin=args.vin,
                model=args.model,
                ecus=ecus,
                region=args.region,
                site=args.site,
                tags=args.tag or [],
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    _write_private(out / "image-root.json", answer.image_root)
    _write_private(out / "director-root.json", answer.director_root)
    _print(
        args,
        answer.vehicle,
        f"provisioned {answer.vehicle.vin} ({answer.vehicle.model}, {len(ecus)} ECU(s)); "
        f"ECU keys (ecu-keys/SERIAL.pem) and pinned roots written to {out}",
    )
    return 0


_STATE_NAMES = {
    value: name.removeprefix("CAMPAIGN_STATE_").lower().replace("_", " ")
    for name, value in campaign_pb2.CampaignState.items()
}
_ASSIGNMENT_NAMES = {
    value: name.removeprefix("ASSIGNMENT_STATE_").lower()
    for name, value in campaign_pb2.AssignmentState.items()
}


def _selector(args: argparse.Namespace) -> campaign_pb2.FleetSelector:
    return campaign_pb2.FleetSelector(
        vehicle_model=args.model,
        vins=args.vin or [],
        regions=args.region or [],
        sites=args.site or [],
        tags=args.tag or [],
        installed_images=args.installed or [],
    )


def _add_selector_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", help="vehicle model")
    parser.add_argument("--vin", action="append", help="only these VINs, repeatable")
    parser.add_argument("--region", action="append", help="any of these regions, repeatable")
    parser.add_argument("--site", action="append", help="any of these sites, repeatable")
    parser.add_argument("--tag", action="append", help="every one of these tags, repeatable")
    parser.add_argument(
        "--installed", action="append", help="runs one of these images (target names)"
    )


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
            (counts.queued, "queued"),
            (counts.canceled, "canceled"),
        )
        if n
    ]
    return (
        f"campaign {campaign.campaign_id} ({_STATE_NAMES[campaign.state]}): "
        f"{counts.total} vehicles, {', '.join(parts) or 'no assignments'}"
    )


def wave_table(campaign: campaign_pb2.Campaign) -> str:
    """The per-wave progress: reach, counts, rates and the gate's verdict."""
    rows = [
        f"{'WAVE':<5} {'REACH':>6} {'STATUS':<8} {'TOTAL':>6} {'QUEUED':>6} {'OFFLINE':>7} "
        f"{'ACTIVE':>6} {'OK':>6} {'FAILED':>6} {'OK%':>6} {'FAIL%':>6}  GATE"
    ]
    for wave in campaign.waves:
        c = wave.counts
        rows.append(
            f"{wave.wave:<5} {wave.reach:>6} {wave.status:<8} {c.total:>6} {c.queued:>6} "
            f"{c.pending:>7} {c.in_progress:>6} {c.committed:>6} {c.failed + c.rolled_back:>6} "
            f"{wave.success_percent:>6.1f} {wave.failure_percent:>6.1f}  {wave.gate}"
        )
    return "\n".join(rows)


def _campaign_table(campaign: campaign_pb2.Campaign) -> str:
    rows = [campaign_summary(campaign)]
    if campaign.pause_reason:
        rows.append(f"reason: {campaign.pause_reason}")
    if len(campaign.waves) > 1:
        rows.append(wave_table(campaign))
    if campaign.assignments:
        rows.append(f"{'VIN':<18} {'WAVE':>4} {'STATE':<12} LAST EVENT")
        rows += [
            f"{a.vin:<18} {a.wave:>4} {_ASSIGNMENT_NAMES[a.state]:<12} {a.last_event}"
            for a in campaign.assignments
        ]
    if campaign.assignments_omitted:
        rows.append(f"... and {campaign.assignments_omitted} more vehicles (use --json --limit)")
    return "\n".join(rows)


def _wave_spec(text: str) -> campaign_pb2.WaveSpec:
    text = text.strip()
    try:
        if text == "all":
            return campaign_pb2.WaveSpec(percent=100.0)
        if text.endswith("%"):
            return campaign_pb2.WaveSpec(percent=float(text[:-1]))
        return campaign_pb2.WaveSpec(count=int(text))
    except ValueError:
        raise CliError(f"wave {text!r}: use a share like 10% or a count like 500") from None


def _window(text: str) -> campaign_pb2.MaintenanceWindow:
    site, _, rest = text.partition("=")
    zone, _, hours = rest.partition(",")
    start, _, end = hours.partition("-")
    if not (site and zone and start and end):
        raise CliError(f"--window {text!r}: expected SITE=TIMEZONE,HH:MM-HH:MM")
    return campaign_pb2.MaintenanceWindow(site=site, timezone=zone, start=start, end=end)


def campaign_create(args: argparse.Namespace) -> int:
    """Creates a campaign that awaits approval (or a draft with --draft)."""
    gate = campaign_pb2.Gate(
        success_percent=args.success_percent,
        min_reports=args.min_reports,
        soak_seconds=args.soak,
    )
    if args.max_failure_percent is not None:
        gate.max_failure_percent = args.max_failure_percent
    if args.max_failure_count is not None:
        gate.max_failure_count = args.max_failure_count
    with _channel(args) as channel:
        campaign = campaign_pb2_grpc.CampaignServiceStub(channel).CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                name=args.name,
                bundle_id=args.bundle,
                selector=_selector(args),
                waves=[_wave_spec(w) for w in args.waves.split(",")],
                gate=gate,
                max_per_minute=args.max_per_minute,
                maintenance_windows=[_window(w) for w in args.window or []],
                rollback_on_failure=args.rollback_on_failure,
                draft=args.draft,
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    _print(
        args,
        campaign,
        f"created campaign {campaign.campaign_id} ({campaign.name}), "
        f"{_STATE_NAMES[campaign.state]}",
    )
    return 0


def _action(method: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        with _channel(args) as channel:
            stub = campaign_pb2_grpc.CampaignServiceStub(channel)
            if method == "StartCampaign":
                request: Any = campaign_pb2.StartCampaignRequest(campaign_id=args.campaign_id)
            else:
                request = campaign_pb2.CampaignAction(
                    campaign_id=args.campaign_id, reason=args.reason
                )
            campaign = getattr(stub, method)(request, timeout=RPC_TIMEOUT_SECONDS)
        _print(args, campaign, campaign_summary(campaign))
        return 0

    run.__doc__ = f"Calls {method}."
    return run


def campaign_retry(args: argparse.Namespace) -> int:
    """Offers the update again to vehicles that failed with the given failure types."""
    with _channel(args) as channel:
        campaign = campaign_pb2_grpc.CampaignServiceStub(channel).RetryCampaign(
            campaign_pb2.RetryCampaignRequest(
                campaign_id=args.campaign_id, failure_types=args.failure_type
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    _print(args, campaign, campaign_summary(campaign))
    return 0


def campaign_list(args: argparse.Namespace) -> int:
    """Lists every campaign, newest first."""
    with _channel(args) as channel:
        answer = campaign_pb2_grpc.CampaignServiceStub(channel).ListCampaigns(
            campaign_pb2.ListCampaignsRequest(), timeout=RPC_TIMEOUT_SECONDS
        )
    _print(args, answer, "\n".join(campaign_summary(c) for c in answer.campaigns) or "none")
    return 0


def campaign_status(args: argparse.Namespace) -> int:
    """Shows a campaign; with --watch, live per-wave progress until it ends."""
    with _channel(args) as channel:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        if not args.watch:
            campaign = stub.GetCampaign(
                campaign_pb2.GetCampaignRequest(
                    campaign_id=args.campaign_id, assignment_limit=args.limit
                ),
                timeout=RPC_TIMEOUT_SECONDS,
            )
            _print(args, campaign, _campaign_table(campaign))
            return 0
        for update in stub.WatchCampaign(
            campaign_pb2.WatchCampaignRequest(campaign_id=args.campaign_id)
        ):
            if args.json:
                print(json.dumps(MessageToDict(update)), flush=True)
                continue
            if sys.stdout.isatty():
                print("\x1b[2J\x1b[H", end="")
            lines = [campaign_summary(update)]
            if update.pause_reason:
                lines.append(f"reason: {update.pause_reason}")
            lines.append(wave_table(update))
            print("\n".join(lines) + "\n", flush=True)
    return 0


def fleet_import(args: argparse.Namespace) -> int:
    """Registers every vehicle of a CSV file (all or none)."""
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path} is not a file")

    def chunks() -> Iterator[fleet_pb2.ImportVehiclesChunk]:
        with path.open("rb") as handle:
            while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                yield fleet_pb2.ImportVehiclesChunk(csv=chunk)

    with _channel(args) as channel:
        answer = fleet_pb2_grpc.FleetServiceStub(channel).ImportVehicles(chunks(), timeout=600.0)
    _print(args, answer, f"imported {answer.imported} vehicles from {path}")
    return 0


def fleet_list(args: argparse.Namespace) -> int:
    """Lists the vehicles a selector picks."""
    with _channel(args) as channel:
        answer = fleet_pb2_grpc.FleetServiceStub(channel).ListVehicles(
            fleet_pb2.ListVehiclesRequest(selector=_selector(args), limit=args.limit),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    rows = [f"{'VIN':<18} {'MODEL':<14} {'REGION':<10} {'SITE':<12} {'VARIANT':<24} TAGS"]
    rows += [
        f"{v.vin:<18} {v.model:<14} {v.region:<10} {v.site:<12} {v.variant:<24} {' '.join(v.tags)}"
        for v in answer.vehicles
    ]
    rows.append(f"{len(answer.vehicles)} of {answer.total} selected vehicles shown")
    _print(args, answer, "\n".join(rows))
    return 0


def token_create(args: argparse.Namespace) -> int:
    """Issues a token (admins only); the secret is printed once."""
    with _channel(args) as channel:
        answer = auth_pb2_grpc.AuthServiceStub(channel).CreateToken(
            auth_pb2.CreateTokenRequest(name=args.name, role=args.role),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    _print(args, answer, answer.token)
    return 0


def whoami(args: argparse.Namespace) -> int:
    """Shows whom the token belongs to."""
    with _channel(args) as channel:
        me = auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
            auth_pb2.WhoAmIRequest(), timeout=RPC_TIMEOUT_SECONDS
        )
    _print(args, me, f"{me.name} ({me.role})")
    return 0


def audit_list(args: argparse.Namespace) -> int:
    """Shows the audit log, newest first."""
    with _channel(args) as channel:
        answer = auth_pb2_grpc.AuthServiceStub(channel).ListAudit(
            auth_pb2.ListAuditRequest(target=args.target, limit=args.limit),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    rows = [
        f"{e.at.ToDatetime():%Y-%m-%d %H:%M:%S} {e.actor:<16} {e.action:<22} {e.target:<8} "
        f"{e.detail}"
        for e in answer.entries
    ]
    _print(args, answer, "\n".join(rows) or "no entries")
    return 0


def _add_campaign_commands(commands: Any) -> None:
    campaign = commands.add_parser("campaign", help="campaigns").add_subparsers(
        dest="action", required=True
    )
    create = campaign.add_parser("create", help="create a campaign (it then awaits approval)")
    create.add_argument("--name", required=True)
    create.add_argument("--bundle", required=True, help="bundle id, e.g. b1")
    _add_selector_arguments(create)
    create.add_argument(
        "--waves", default="100%", help="cumulative reach of each wave, e.g. 1%%,10%%,50%%,100%%"
    )
    create.add_argument("--success-percent", type=float, default=90.0, help="success gate")
    create.add_argument("--max-failure-percent", type=float, default=10.0, help="failure gate")
    create.add_argument("--max-failure-count", type=int, help="failure gate as a count")
    create.add_argument("--min-reports", type=int, default=1, help="reports before judging")
    create.add_argument("--soak", type=int, default=0, help="seconds between waves")
    create.add_argument("--max-per-minute", type=int, default=0, help="pacing (0: no limit)")
    create.add_argument(
        "--window", action="append", help="maintenance window SITE=TIMEZONE,HH:MM-HH:MM"
    )
    create.add_argument(
        "--rollback-on-failure", action="store_true", help="roll back when the failure gate trips"
    )
    create.add_argument("--draft", action="store_true", help="keep as a draft (submit later)")
    create.set_defaults(func=campaign_create)
    for name, method, text in (
        ("submit", "SubmitCampaign", "submit a draft for approval"),
        ("approve", "ApproveCampaign", "approve a campaign (not your own)"),
        ("start", "StartCampaign", "start an approved campaign"),
        ("pause", "PauseCampaign", "pause a running campaign"),
        ("resume", "ResumeCampaign", "resume a paused campaign"),
        ("abort", "AbortCampaign", "abort a campaign"),
        ("rollback", "RollbackCampaign", "abort and roll affected vehicles back"),
    ):
        action = campaign.add_parser(name, help=text)
        action.add_argument("campaign_id")
        action.add_argument("--reason", default="", help="kept in the audit log")
        action.set_defaults(func=_action(method))
    retry = campaign.add_parser("retry", help="retry vehicles that failed with these types")
    retry.add_argument("campaign_id")
    retry.add_argument(
        "--failure-type",
        action="append",
        required=True,
        help="download, verification, install, health, rolled_back, timed_out; repeatable",
    )
    retry.set_defaults(func=campaign_retry)
    campaign.add_parser("list", help="every campaign").set_defaults(func=campaign_list)
    status = campaign.add_parser("status", help="progress of a campaign")
    status.add_argument("campaign_id")
    status.add_argument("--watch", action="store_true", help="live per-wave progress until done")
    status.add_argument("--limit", type=int, default=1000, help="at most this many vehicles")
    status.set_defaults(func=campaign_status)


def _add_bundle_commands(commands: Any) -> None:
    """``staffel bundle create`` and ``staffel bundle list``."""
    bundle = commands.add_parser("bundle", help="bundles of images").add_subparsers(
        dest="action", required=True
    )
    create_bundle = bundle.add_parser("create", help="group images for a vehicle model")
    create_bundle.add_argument("--name", required=True)
    create_bundle.add_argument("--model", required=True)
    create_bundle.add_argument(
        "--version", default="1", help="created once; a new set of images needs a new version"
    )
    create_bundle.add_argument("images", nargs="+", metavar="IMAGE", help="target names")
    create_bundle.set_defaults(func=bundle_create)
    bundle.add_parser("list", help="list bundles and their versions").set_defaults(func=bundle_list)


def build_parser() -> argparse.ArgumentParser:
    """The full ``staffel`` command line."""
    parser = argparse.ArgumentParser(prog="staffel", description="Staffel release management.")
    parser.add_argument(
        "--server",
        default=os.environ.get("STAFFEL_SERVER", DEFAULT_SERVER),
        help="server gRPC address HOST:PORT (env STAFFEL_SERVER)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("STAFFEL_TOKEN", ""),
        help="bearer token (env STAFFEL_TOKEN)",
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
    upload.add_argument("--ecu-type", default="", help="ECU type or supplier of the image")
    upload.set_defaults(func=image_upload)
    image.add_parser("list", help="list published images").set_defaults(func=image_list)

    _add_bundle_commands(commands)

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
        "--out",
        required=True,
        help="the vehicle's folder (outside git): ecu-keys/SERIAL.pem, image-root.json, "
        "director-root.json",
    )
    provision.add_argument("--region", default="")
    provision.add_argument("--site", default="")
    provision.add_argument("--tag", action="append", help="repeatable")
    provision.set_defaults(func=fleet_provision)
    importing = fleet.add_parser("import", help="register vehicles from a CSV file")
    importing.add_argument("file", help="CSV: vin,model,region,site,tags,ecus")
    importing.set_defaults(func=fleet_import)
    listing = fleet.add_parser("list", help="vehicles a selector picks")
    _add_selector_arguments(listing)
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(func=fleet_list)

    token = commands.add_parser("token", help="tokens (admins)").add_subparsers(
        dest="action", required=True
    )
    create_token = token.add_parser("create", help="issue a token; printed once")
    create_token.add_argument("--name", required=True)
    create_token.add_argument(
        "--role", required=True, choices=("viewer", "release_manager", "approver", "admin")
    )
    create_token.set_defaults(func=token_create)
    commands.add_parser("whoami", help="whose token this is").set_defaults(func=whoami)
    audit = commands.add_parser("audit", help="the audit log, newest first")
    audit.add_argument("--target", default="", help="e.g. c1")
    audit.add_argument("--limit", type=int, default=100)
    audit.set_defaults(func=audit_list)

    _add_campaign_commands(commands)
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
