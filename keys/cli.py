"""The ``staffel keys`` commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keys import ceremony_cli, fleet_cli
from keys.errors import KeyToolError
from keys.keyset import (
    ALGORITHMS,
    PASSPHRASE_ENV,
    init_keyset,
    passphrase_from_env,
)
from keys.manage import add_supplier


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``keys init`` and the other key commands under ``staffel``.

    Args:
        subparsers: The object returned by the parent parser's ``add_subparsers()``.
    """
    keys_parser = subparsers.add_parser("keys", help="create and manage signing keys")
    commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    init_parser = commands.add_parser(
        "init",
        help="create one key per repository and role",
        description=(
            "Creates the Image and Director repositories' keys (root, targets, snapshot, "
            f"timestamp) in DIR. The private keys are encrypted when {PASSPHRASE_ENV} is set."
        ),
    )
    init_parser.add_argument("--dir", required=True, type=Path, help="key set directory")
    init_parser.add_argument(
        "--algorithm", choices=ALGORITHMS, default="ed25519", help="key type (default ed25519)"
    )
    init_parser.add_argument(
        "--root-keys", type=int, default=1, help="root keys per repository (e.g. 3)"
    )
    init_parser.add_argument(
        "--root-threshold", type=int, default=1, help="root signatures needed (e.g. 2)"
    )
    init_parser.add_argument(
        "--offline-dir",
        type=Path,
        help="write the root private keys here, never into --dir (carry it offline)",
    )
    init_parser.add_argument(
        "--offline-targets",
        action="store_true",
        help="with --offline-dir: keep the Image repository's targets key offline too",
    )
    init_parser.set_defaults(func=run_init)
    supplier = commands.add_parser("supplier", help="delegate target names to a supplier")
    supplier_commands = supplier.add_subparsers(dest="supplier_command", required=True)
    supplier_add = supplier_commands.add_parser(
        "add",
        help="create a supplier's role and key",
        description=(
            "Creates the Image repository role supplier-NAME with one online key. The "
            "top-level targets delegate the target names matching --paths to it, before "
            "the bins, when they are next signed."
        ),
    )
    supplier_add.add_argument("--dir", required=True, type=Path, help="key set directory")
    supplier_add.add_argument("--name", required=True, help="the supplier, e.g. brakes")
    supplier_add.add_argument(
        "--paths", required=True, nargs="+", help="glob patterns over target names"
    )
    supplier_add.add_argument("--algorithm", choices=ALGORITHMS, default="ed25519")
    supplier_add.set_defaults(func=run_supplier_add)
    ceremony_cli.add_commands(commands)
    fleet_cli.add_commands(commands)


def run_supplier_add(args: argparse.Namespace) -> int:
    """Handles ``staffel keys supplier add``; returns the process exit status."""
    try:
        entry = add_supplier(
            args.dir,
            args.name,
            args.paths,
            algorithm=args.algorithm,
            passphrase=passphrase_from_env(),
        )
    except KeyToolError as error:
        print(f"staffel keys supplier add: {error}", file=sys.stderr)
        return 1
    print(f"added image.supplier-{args.name} ({args.dir / entry.file}) for {' '.join(args.paths)}")
    return 0


def run_init(args: argparse.Namespace) -> int:
    """Handles ``staffel keys init``; returns the process exit status."""
    passphrase = passphrase_from_env()
    try:
        keyset = init_keyset(
            args.dir,
            algorithm=args.algorithm,
            passphrase=passphrase,
            root_keys=args.root_keys,
            root_threshold=args.root_threshold,
            offline_dir=args.offline_dir,
            offline_targets=args.offline_targets,
        )
    except KeyToolError as error:
        print(f"staffel keys init: {error}", file=sys.stderr)
        return 1
    state = "encrypted" if passphrase else f"NOT encrypted (set {PASSPHRASE_ENV} to encrypt)"
    print(f"created key set in {keyset.directory}, private keys {state}:")
    for name, role in sorted(keyset.roles().items()):
        keyids = ", ".join(entry.public.keyid for entry in role.keys)
        offline = " (offline)" if any(entry.offline for entry in role.keys) else ""
        print(f"  {name:<20} {role.threshold} of {keyids}{offline}")
    if args.offline_dir:
        print(f"root private keys are in {args.offline_dir}: move them to offline media now")
    return 0
