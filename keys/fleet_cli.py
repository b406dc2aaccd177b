"""``staffel keys fleet``: the fleet CA that issues vehicle and relay certificates for mTLS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keys.errors import KeyToolError
from keys.fleet_ca import FleetCA


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``fleet init``, ``fleet vehicle`` and ``fleet relay`` under ``staffel keys``.

    Args:
        commands: The subparsers of the ``keys`` command.
    """
    fleet = commands.add_parser("fleet", help="fleet CA: certificates for vehicles and relays")
    actions = fleet.add_subparsers(dest="fleet_command", required=True)
    init = actions.add_parser("init", help="create the fleet CA in DIR (outside any git tree)")
    init.add_argument("--dir", required=True, type=Path, help="CA directory")
    init.set_defaults(func=_run_init)
    vehicle = actions.add_parser("vehicle", help="issue a vehicle's client certificate")
    vehicle.add_argument("--dir", required=True, type=Path, help="CA directory")
    vehicle.add_argument("--vin", required=True)
    vehicle.add_argument("--site", required=True, help="the site whose relay serves it")
    vehicle.add_argument("--out", type=Path, help="folder for VIN.crt/.key (default DIR/vehicles)")
    vehicle.set_defaults(func=_run_vehicle)
    relay = actions.add_parser("relay", help="issue a relay's server and client certificate")
    relay.add_argument("--dir", required=True, type=Path, help="CA directory")
    relay.add_argument("--name", required=True, help="the relay's name")
    relay.add_argument("--site", required=True, help="the site it serves")
    relay.add_argument(
        "--host", action="append", default=[], help="DNS name or IP it serves at (repeatable)"
    )
    relay.add_argument("--out", type=Path, help="folder for NAME.crt/.key (default DIR/relays)")
    relay.set_defaults(func=_run_relay)


def _run_init(args: argparse.Namespace) -> int:
    try:
        ca = FleetCA.create(args.dir)
    except KeyToolError as error:
        print(f"staffel keys fleet init: {error}", file=sys.stderr)
        return 1
    print(f"created fleet CA {ca.cert_path} (give this file to relays and vehicles)")
    return 0


def _run_vehicle(args: argparse.Namespace) -> int:
    try:
        files = FleetCA.load(args.dir).issue_vehicle(args.vin, site=args.site, out=args.out)
    except KeyToolError as error:
        print(f"staffel keys fleet vehicle: {error}", file=sys.stderr)
        return 1
    print(f"issued {files.cert} and {files.key}")
    return 0


def _run_relay(args: argparse.Namespace) -> int:
    try:
        files = FleetCA.load(args.dir).issue_relay(
            args.name, site=args.site, hosts=tuple(args.host), out=args.out
        )
    except KeyToolError as error:
        print(f"staffel keys fleet relay: {error}", file=sys.stderr)
        return 1
    print(f"issued {files.cert} and {files.key}")
    return 0
