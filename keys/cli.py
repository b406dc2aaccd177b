"""The ``staffel keys`` commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keys import fleet_cli
from keys.errors import KeyToolError
from keys.keyset import (
    ALGORITHMS,
    PASSPHRASE_ENV,
    REPOSITORIES,
    ROLES,
    init_keyset,
    passphrase_from_env,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``keys init`` under the ``staffel`` command's subparsers.

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
    init_parser.set_defaults(func=run_init)
    fleet_cli.add_commands(commands)


def run_init(args: argparse.Namespace) -> int:
    """Handles ``staffel keys init``; returns the process exit status."""
    passphrase = passphrase_from_env()
    try:
        keyset = init_keyset(args.dir, algorithm=args.algorithm, passphrase=passphrase)
    except KeyToolError as error:
        print(f"staffel keys init: {error}", file=sys.stderr)
        return 1
    state = "encrypted" if passphrase else f"NOT encrypted (set {PASSPHRASE_ENV} to encrypt)"
    print(f"created key set in {keyset.directory}, private keys {state}:")
    for repo in REPOSITORIES:
        for role in ROLES:
            keyids = ", ".join(key.keyid for key in keyset.public_keys(repo, role))
            print(f"  {repo}.{role:<12} {keyids}")
    return 0
