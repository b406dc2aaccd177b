"""The offline ceremony on files: threshold roots, offline keys, add, revoke, sign, check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from keys.ceremony import check_root_update, next_root, sign_file, signer_from_key_file, to_bytes
from keys.cli import add_parser
from keys.errors import CeremonyError, KeySetInvalidError, PassphraseError
from keys.keyset import KeySet, init_keyset
from keys.manage import add_key, revoke_key


def make_cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="staffel")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run(*argv: str) -> int:
    args = make_cli().parse_args(["keys", *argv])
    code: int = args.func(args)
    return code


def test_init_with_a_2_of_3_root_keeps_the_root_keys_out_of_the_server_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAFFEL_KEY_PASSPHRASE", "ceremony")
    server, offline = tmp_path / "server", tmp_path / "offline"
    assert run(
        "init", "--dir", str(server), "--root-keys", "3", "--root-threshold", "2",
        "--offline-dir", str(offline), "--offline-targets", "--algorithm", "ecdsa-p256",
    ) == 0  # fmt: skip

    keyset = KeySet.load(server, passphrase=b"ceremony")
    assert keyset.threshold("image", "root") == 2
    assert len(keyset.public_keys("director", "root")) == 3
    assert keyset.public_keys("image", "root")[0].keytype == "ecdsa"
    assert not list(server.glob("*.root*.key"))
    assert not (server / "image.targets.key").exists()
    assert sorted(p.name for p in offline.glob("*.key")) == sorted(
        [f"{r}.root.key" for r in ("image", "director")]
        + [f"{r}.root.{n}.key" for r in ("image", "director") for n in (2, 3)]
        + ["image.targets.key"]
    )
    for key_file in offline.glob("*.key"):  # encrypted at rest
        assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    assert keyset.signers("image", "root") == []
    assert len(keyset.signers("image", "snapshot")) == 1
    # Root version 1 was signed by all three root keys at init, while they were at hand.
    for repo in ("image", "director"):
        root = Metadata[Root].from_bytes((server / f"{repo}.1.root.json").read_bytes())
        root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
        assert len(root.signatures) == 3


def test_a_new_root_needs_a_threshold_of_old_and_new_root_keys(tmp_path: Path) -> None:
    server, offline = tmp_path / "server", tmp_path / "offline"
    keyset = init_keyset(server, root_keys=3, root_threshold=2, offline_dir=offline)
    trusted = Metadata[Root].from_bytes((server / "image.1.root.json").read_bytes())
    [_, second, third] = keyset.roles()["image.root"].keys
    # Rotate: a fresh root key replaces the third (compromised) one.
    fresh = add_key(server, "image.root", offline_dir=offline)
    revoke_key(server, third.public.keyid)
    path = tmp_path / "2.root.json"
    path.write_bytes(to_bytes(Metadata(next_root(trusted.signed, KeySet.load(server), "image"))))

    sign_file(path, signer_from_key_file(offline / second.file, None))
    new = Metadata[Root].from_bytes(path.read_bytes())
    with pytest.raises(CeremonyError, match="2 signatures of the current root keys"):
        check_root_update(trusted, new)

    sign_file(path, signer_from_key_file(offline / third.file, None))  # old threshold met
    with pytest.raises(CeremonyError, match="2 signatures of the new root keys"):
        check_root_update(trusted, Metadata[Root].from_bytes(path.read_bytes()))

    assert run("sign", str(path), "--key", str(offline / fresh.file)) == 0
    new = Metadata[Root].from_bytes(path.read_bytes())
    check_root_update(trusted, new)
    assert third.public.keyid not in new.signed.roles["root"].keyids
    assert fresh.public.keyid in new.signed.roles["root"].keyids

    with pytest.raises(CeremonyError, match="version 2"):
        check_root_update(new, new)


def test_revoking_the_last_key_of_a_role_is_refused(tmp_path: Path) -> None:
    keyset = init_keyset(tmp_path)
    [only] = keyset.public_keys("image", "timestamp")
    with pytest.raises(KeySetInvalidError, match="add its replacement first"):
        revoke_key(tmp_path, only.keyid)


def test_revoked_online_key_file_is_put_out_of_use(tmp_path: Path) -> None:
    init_keyset(tmp_path)
    added = add_key(tmp_path, "image.timestamp")
    [old, new] = KeySet.load(tmp_path).public_keys("image", "timestamp")
    assert new.keyid == added.public.keyid
    assert run("revoke", "--dir", str(tmp_path), "--keyid", old.keyid) == 0
    assert not (tmp_path / "image.timestamp.key").exists()
    assert (tmp_path / "image.timestamp.key.revoked").exists()
    assert [k.keyid for k in KeySet.load(tmp_path).public_keys("image", "timestamp")] == [new.keyid]


def test_a_running_key_set_sees_added_keys(tmp_path: Path) -> None:
    keyset = init_keyset(tmp_path)
    added = add_key(tmp_path, "director.snapshot")
    assert keyset.signer_for(added.public.keyid) is not None


def test_sign_needs_the_passphrase_of_an_encrypted_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server, offline = tmp_path / "server", tmp_path / "offline"
    init_keyset(server, offline_dir=offline, passphrase=b"secret")
    path = tmp_path / "root.json"
    path.write_bytes((server / "image.1.root.json").read_bytes())
    monkeypatch.delenv("STAFFEL_KEY_PASSPHRASE", raising=False)
    assert run("sign", str(path), "--key", str(offline / "image.root.key")) == 1
    assert "STAFFEL_KEY_PASSPHRASE" in capsys.readouterr().err
    with pytest.raises(PassphraseError):
        signer_from_key_file(offline / "image.root.key", b"wrong")


def test_list_shows_thresholds_and_offline_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_keyset(tmp_path / "s", root_keys=3, root_threshold=2, offline_dir=tmp_path / "o")
    assert run("list", "--dir", str(tmp_path / "s")) == 0
    out = capsys.readouterr().out
    assert "image.root (threshold 2)" in out
    assert out.count("offline") == 6
    index = json.loads((tmp_path / "s" / "keyset.json").read_text())
    assert "PRIVATE" not in json.dumps(index)
