"""The key set: creation, loading, refusal to overwrite, encryption."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from keys.cli import add_parser
from keys.errors import KeySetExistsError, KeySetNotFoundError, KeyToolError, PassphraseError
from keys.keyset import PASSPHRASE_ENV, REPOSITORIES, ROLES, KeySet, init_keyset

PAYLOAD = b"signed bytes"


def assert_signs_and_verifies(keyset: KeySet) -> None:
    for repo in REPOSITORIES:
        for role in ROLES:
            [signer] = keyset.signers(repo, role)
            [public] = keyset.public_keys(repo, role)
            public.verify_signature(signer.sign(PAYLOAD), PAYLOAD)
            assert keyset.threshold(repo, role) == 1


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_init_writes_one_private_key_per_repository_and_role(
    tmp_path: Path, algorithm: str
) -> None:
    directory = tmp_path / "keys"
    keyset = init_keyset(directory, algorithm=algorithm)

    for repo in REPOSITORIES:
        for role in ROLES:
            key_file = directory / f"{repo}.{role}.key"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    index = json.loads((directory / "keyset.json").read_text())
    assert set(index["roles"]) == {f"{r}.{o}" for r in REPOSITORIES for o in ROLES} | {"image.bins"}
    assert b"PRIVATE" not in (directory / "keyset.json").read_bytes()
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []
    assert_signs_and_verifies(keyset)


def test_keys_differ_between_roles_and_repositories(tmp_path: Path) -> None:
    keyset = init_keyset(tmp_path)
    keyids = {keyset.public_keys(r, o)[0].keyid for r in REPOSITORIES for o in ROLES}
    assert len(keyids) == len(REPOSITORIES) * len(ROLES)


def test_load_reads_the_keys_that_init_wrote(tmp_path: Path) -> None:
    created = init_keyset(tmp_path)
    loaded = KeySet.load(tmp_path)

    for repo in REPOSITORIES:
        for role in ROLES:
            assert loaded.public_keys(repo, role) == created.public_keys(repo, role)
    assert_signs_and_verifies(loaded)


def test_init_refuses_to_overwrite_a_key_set(tmp_path: Path) -> None:
    init_keyset(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(KeySetExistsError, match="never overwritten"):
        init_keyset(tmp_path)

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_init_refuses_a_directory_with_a_stray_key_file(tmp_path: Path) -> None:
    (tmp_path / "image.root.key").write_bytes(b"an old key")

    with pytest.raises(KeySetExistsError, match=r"image\.root\.key"):
        init_keyset(tmp_path)


def test_load_without_key_set_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(KeySetNotFoundError, match=r"staffel keys init --dir"):
        KeySet.load(tmp_path)


def test_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyToolError, match="ed25519, ecdsa-p256"):
        init_keyset(tmp_path, algorithm="rsa")
    assert list(tmp_path.iterdir()) == []


def test_encrypted_keys_need_the_right_passphrase(tmp_path: Path) -> None:
    init_keyset(tmp_path, passphrase=b"correct horse")
    pem = (tmp_path / "director.timestamp.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    without = KeySet.load(tmp_path)
    with pytest.raises(PassphraseError, match=PASSPHRASE_ENV):
        without.signers("director", "timestamp")
    # Public keys need no passphrase.
    assert len(without.public_keys("director", "timestamp")) == 1

    wrong = KeySet.load(tmp_path, passphrase=b"wrong")
    with pytest.raises(PassphraseError, match="cannot decrypt"):
        wrong.signers("image", "root")

    assert_signs_and_verifies(KeySet.load(tmp_path, passphrase=b"correct horse"))


def test_missing_private_key_file_is_reported(tmp_path: Path) -> None:
    init_keyset(tmp_path)
    (tmp_path / "image.snapshot.key").unlink()

    with pytest.raises(KeySetNotFoundError, match=r"image\.snapshot\.key is missing"):
        KeySet.load(tmp_path).signers("image", "snapshot")


def make_cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="staffel")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_keys_init_encrypts_with_the_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "from the environment")
    directory = tmp_path / "keys"
    args = make_cli().parse_args(
        ["keys", "init", "--dir", str(directory), "--algorithm", "ecdsa-p256"]
    )

    assert args.func(args) == 0

    assert "director.timestamp" in capsys.readouterr().out
    keyset = KeySet.load(directory, passphrase=b"from the environment")
    assert keyset.public_keys("image", "root")[0].keytype == "ecdsa"
    assert_signs_and_verifies(keyset)

    assert args.func(args) == 1
    assert "never overwritten" in capsys.readouterr().err


def test_cli_keys_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit):
        make_cli().parse_args(["keys"])
