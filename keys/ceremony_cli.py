"""``staffel keys`` commands of the key ceremony: list, add, revoke, sign, root, targets.

``root``/``targets`` ``export`` and ``import`` run on the server host (they open the
server's database and its key set); ``sign`` runs on the offline machine that holds the
root (or targets) private keys and needs nothing but the metadata file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from securesystemslib.signer import Signer

from keys.ceremony import sign_file, signer_from_key_file
from keys.errors import KeyToolError
from keys.keyset import ALGORITHMS, KeySet, passphrase_from_env
from keys.manage import add_key, add_public_key, revoke_key

if TYPE_CHECKING:
    from server.store import Database


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers the ceremony commands under ``staffel keys``.

    Args:
        commands: The subparsers of the ``keys`` command.
    """
    listing = commands.add_parser("list", help="the key set's roles, keys and thresholds")
    listing.add_argument("--dir", required=True, type=Path, help="key set directory")
    listing.set_defaults(func=_run_list)

    add = commands.add_parser("add", help="create one more key for a role (rotation)")
    add.add_argument("--dir", required=True, type=Path, help="key set directory")
    add.add_argument("--role", required=True, help="REPO.ROLE, e.g. image.root")
    add.add_argument("--algorithm", choices=ALGORITHMS, default="ed25519")
    where = add.add_mutually_exclusive_group()
    where.add_argument("--offline-dir", type=Path, help="write the private key here (offline)")
    where.add_argument(
        "--hsm-key", help="create the key in an HSM: MODULE#TOKEN_LABEL#KEY_LABEL (PIN: env)"
    )
    add.set_defaults(func=_run_add)

    revoke = commands.add_parser("revoke", help="drop a (compromised or retired) key")
    revoke.add_argument("--dir", required=True, type=Path, help="key set directory")
    revoke.add_argument("--keyid", required=True)
    revoke.add_argument("--threshold", type=int, help="the role's new threshold")
    revoke.set_defaults(func=_run_revoke)

    sign = commands.add_parser("sign", help="add signatures to root or targets metadata")
    sign.add_argument("metadata", type=Path, help="the exported metadata file")
    source = sign.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", type=Path, action="append", help="PEM private key file")
    source.add_argument("--hsm-key", help="PKCS#11 key as MODULE#TOKEN_LABEL#KEY_LABEL")
    sign.set_defaults(func=_run_sign)

    for role in ("root", "targets"):
        group = commands.add_parser(role, help=f"offline ceremony of a new {role}")
        actions = group.add_subparsers(dest=f"{role}_command", required=True)
        export = actions.add_parser("export", help=f"write the next {role}, unsigned")
        _server_options(export, with_repo=role == "root")
        export.add_argument("--out", required=True, type=Path)
        export.set_defaults(func=_run_export, role=role)
        imported = actions.add_parser("import", help=f"publish a signed {role}")
        _server_options(imported, with_repo=role == "root")
        imported.add_argument("metadata", type=Path, help=f"the signed {role}")
        if role == "root":
            imported.add_argument("--targets", type=Path, help="signed targets to add with it")
        imported.set_defaults(func=_run_import, role=role)


def _server_options(parser: argparse.ArgumentParser, *, with_repo: bool) -> None:
    parser.add_argument("--keys-dir", required=True, type=Path, help="the server's key set")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database-url", help="the server's database URL")
    where.add_argument("--data-dir", type=Path, help="the server's data dir (SQLite)")
    if with_repo:
        parser.add_argument("--repo", choices=("image", "director"), required=True)


def _run_list(args: argparse.Namespace) -> int:
    try:
        keyset = KeySet.load(args.dir)
    except KeyToolError as error:
        return _fail("list", error)
    for name, role in sorted(keyset.roles().items()):
        print(f"{name} (threshold {role.threshold})")
        for entry in role.keys:
            where = "offline" if entry.offline else entry.file
            print(f"  {entry.public.keyid}  {entry.public.keytype}  {where}")
    return 0


def _run_add(args: argparse.Namespace) -> int:
    if args.hsm_key:
        from keys.pkcs11 import Pkcs11Key, generate_key  # noqa: PLC0415 - PyKCS11 when used

        try:
            public = generate_key(Pkcs11Key.parse(args.hsm_key))
            add_public_key(args.dir, args.role, public, reference=args.hsm_key)
        except KeyToolError as error:
            return _fail("add", error)
        print(f"added {public.keyid} to {args.role} (in the HSM: {args.hsm_key})")
        return 0
    try:
        entry = add_key(
            args.dir,
            args.role,
            algorithm=args.algorithm,
            passphrase=passphrase_from_env(),
            offline_dir=args.offline_dir,
        )
    except KeyToolError as error:
        return _fail("add", error)
    where = args.offline_dir or args.dir
    print(f"added {entry.public.keyid} to {args.role} ({where / entry.file})")
    print("the repository trusts it once a new root names it: `staffel keys root export`")
    return 0


def _run_revoke(args: argparse.Namespace) -> int:
    try:
        role = revoke_key(args.dir, args.keyid, threshold=args.threshold)
    except KeyToolError as error:
        return _fail("revoke", error)
    print(
        f"revoked {args.keyid} from {role}; publish a root without it: `staffel keys root export`"
    )
    return 0


def _run_sign(args: argparse.Namespace) -> int:
    try:
        signers: list[Signer]
        if args.hsm_key:
            from keys.pkcs11 import Pkcs11Signer  # noqa: PLC0415 - PyKCS11 only when used

            signers = [Pkcs11Signer.from_reference(args.hsm_key)]
        else:
            signers = [signer_from_key_file(path, passphrase_from_env()) for path in args.key]
        for signer in signers:
            keyid = sign_file(args.metadata, signer)
            print(f"signed {args.metadata} with {keyid}")
    except KeyToolError as error:
        return _fail("sign", error)
    return 0


def _open(args: argparse.Namespace) -> tuple[Database, KeySet]:
    from server.store import Database  # noqa: PLC0415 - the server side of the ceremony

    keys = KeySet.load(args.keys_dir, passphrase_from_env())
    if args.database_url:
        return Database.from_url(args.database_url), keys
    return Database.in_data_dir(args.data_dir), keys


def _run_export(args: argparse.Namespace) -> int:
    from server.errors import StaffelError  # noqa: PLC0415
    from server.repository.image_repo import ImageRepository  # noqa: PLC0415
    from server.repository.roots import export_next_root  # noqa: PLC0415

    try:
        database, keys = _open(args)
        try:
            if args.role == "root":
                with database.session() as session:
                    data = export_next_root(session, keys, args.repo)
            else:
                data = ImageRepository(database, keys).export_next_targets()
        finally:
            database.dispose()
        args.out.write_bytes(data)
    except (KeyToolError, StaffelError, OSError) as error:
        return _fail(f"{args.role} export", error)
    print(f"wrote the next {args.role}, unsigned, to {args.out}: sign it offline with "
          f"`staffel keys sign --key KEYFILE {args.out.name}`")  # fmt: skip
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from server.errors import StaffelError  # noqa: PLC0415
    from server.repository.director import Director  # noqa: PLC0415
    from server.repository.image_repo import ImageRepository  # noqa: PLC0415

    try:
        data = args.metadata.read_bytes()
        targets_file = getattr(args, "targets", None)
        targets = targets_file.read_bytes() if targets_file else None
        database, keys = _open(args)
        try:
            if args.role == "targets":
                ImageRepository(database, keys).import_metadata(targets=data)
            elif args.repo == "image":
                ImageRepository(database, keys).import_metadata(root=data, targets=targets)
            else:
                Director(database, keys).import_root(data)
        finally:
            database.dispose()
    except (KeyToolError, StaffelError, OSError) as error:
        return _fail(f"{args.role} import", error)
    print(f"published {args.metadata}")
    return 0


def _fail(command: str, error: Exception) -> int:
    print(f"staffel keys {command}: {error}", file=sys.stderr)
    return 1
