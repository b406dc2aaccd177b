"""The PKCS#11 signer against a real SoftHSM2 token (Debian's softhsm2, made by `make test`).

Each test creates its own token in a temporary folder through ``SOFTHSM2_CONF``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from keys.ceremony import check_root_update, next_root, to_bytes
from keys.cli import add_parser
from keys.errors import HsmError
from keys.keyset import KeySet, init_keyset
from keys.pkcs11 import PIN_ENV, Pkcs11Key, Pkcs11Signer, generate_key

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN = "staffel-test"
PIN = "4321"


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SoftHSM2 token; returns the reference prefix ``MODULE#TOKEN``."""
    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        pytest.fail("SoftHSM2 is missing: run tests/keys/ensure-softhsm2.sh (make test does)")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv(PIN_ENV, PIN)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN,
         "--pin", PIN, "--so-pin", "8765"],
        check=True, capture_output=True,
    )  # fmt: skip
    return f"{MODULE}#{TOKEN}"


def test_a_key_made_in_the_hsm_signs_verifiable_metadata(token: str) -> None:
    public = generate_key(Pkcs11Key.parse(f"{token}#root-hsm"))
    signer = Pkcs11Signer.from_reference(f"{token}#root-hsm")
    assert signer.public_key == public
    payload = b"canonical metadata bytes"
    public.verify_signature(signer.sign(payload), payload)
    with pytest.raises(HsmError, match="already holds"):
        generate_key(Pkcs11Key.parse(f"{token}#root-hsm"))


def test_root_rotation_signed_in_softhsm2_is_accepted(tmp_path: Path, token: str) -> None:
    server, offline = tmp_path / "server", tmp_path / "offline"
    init_keyset(server, root_keys=1, offline_dir=offline)
    trusted = Metadata[Root].from_bytes((server / "image.1.root.json").read_bytes())
    parser = argparse.ArgumentParser(prog="staffel")
    add_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["keys", *argv])
        code: int = args.func(args)
        return code

    # The new root key is made in the HSM; the old file key is retired.
    assert run("add", "--dir", str(server), "--role", "image.root",
               "--hsm-key", f"{token}#image-root-2") == 0  # fmt: skip
    [old, hsm] = KeySet.load(server).public_keys("image", "root")
    assert run("revoke", "--dir", str(server), "--keyid", old.keyid) == 0
    path = tmp_path / "2.root.json"
    path.write_bytes(to_bytes(Metadata(next_root(trusted.signed, KeySet.load(server), "image"))))

    assert run("sign", str(path), "--key", str(offline / "image.root.key")) == 0
    assert run("sign", str(path), "--hsm-key", f"{token}#image-root-2") == 0

    new = Metadata[Root].from_bytes(path.read_bytes())
    check_root_update(trusted, new)
    assert new.signed.roles["root"].keyids == [hsm.keyid]
    assert hsm.keytype == "ecdsa"


def test_wrong_pin_and_unknown_token_are_reported(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_key(Pkcs11Key.parse(f"{token}#k"))
    monkeypatch.setenv(PIN_ENV, "0000")
    with pytest.raises(HsmError, match="cannot open token"):
        Pkcs11Signer.from_reference(f"{token}#k")
    monkeypatch.setenv(PIN_ENV, PIN)
    with pytest.raises(HsmError, match="no token labelled"):
        Pkcs11Signer.from_reference(f"{MODULE}#other#k")
    with pytest.raises(HsmError, match="MODULE#TOKEN_LABEL#KEY_LABEL"):
        Pkcs11Key.parse("just-a-label")
