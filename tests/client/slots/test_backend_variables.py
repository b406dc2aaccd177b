"""What each bootloader sees: the variables the real tools store, and torn writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from client.slots import BootState, next_boot
from client.slots.tools import parse_variables
from client.slots.uboot import ENV_SIZE
from tests.client.slots.conftest import make_boot_control


def _printenv(directory: Path) -> dict[str, str]:
    listing = subprocess.run(
        ["fw_printenv", "-c", str(directory / "fw_env.config")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return parse_variables(listing)


def test_uboot_switch_sets_the_bootcount_variables_in_one_write(tmp_path: Path) -> None:
    control = make_boot_control("uboot", tmp_path)
    control.set_next("B", 3)

    variables = _printenv(tmp_path)
    names = ("boot_slot", "upgrade_available", "bootcount", "bootlimit")
    assert [variables[name] for name in names] == ["B", "1", "0", "3"]
    control.write_state(next_boot(control.read_state()))  # U-Boot counts one boot
    assert _printenv(tmp_path)["bootcount"] == "1"


def test_uboot_torn_switch_leaves_the_old_state_whole(tmp_path: Path) -> None:
    control = make_boot_control("uboot", tmp_path)
    env = tmp_path / "uboot.env"
    control.set_next("B", 3)
    data = bytearray(env.read_bytes())
    # The copy written last carries the higher flag byte (offset 4 of each copy).
    newest = 0 if data[4] > data[ENV_SIZE + 4] else ENV_SIZE
    # A power cut in the middle of that write: its second half never reached the flash.
    data[newest + 100 : newest + ENV_SIZE] = b"\xff" * (ENV_SIZE - 100)
    env.write_bytes(bytes(data))

    assert control.read_state() == BootState(committed="A", booted="A")


def test_grub_variables_follow_the_slot_order_layout(tmp_path: Path) -> None:
    control = make_boot_control("grub", tmp_path)
    control.set_next("B", 3)

    listing = subprocess.run(
        ["grub-editenv", str(tmp_path / "grubenv"), "list"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    variables = parse_variables(listing)
    assert variables["ORDER"] == "B A"
    assert (variables["A_OK"], variables["B_OK"], variables["B_TRIES"]) == ("1", "0", "3")
    assert (tmp_path / "grubenv").stat().st_size == 1024
