"""The technician's one-shot commands: ``status`` and ``install --offline DIR``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from client.agent import Agent
from client.config import ClientConfig
from client.journal import Journal, Outbox
from client.offline import OfflineSource
from client.slots import SlotInventory, open_boot_control


def install_offline(config: ClientConfig, folder: Path, say: Callable[[str], None]) -> int:
    """Install the update in ``folder`` through the same verification as the network path.

    Returns:
        0 when the update ended (committed, rolled back or refused, events queued), 1 when
        it stopped half-way and resumes at the next run.

    Raises:
        ClientError: The folder or the vehicle's state is unusable.
    """
    with OfflineSource(folder) as source:
        agent = Agent.from_config(config, say=say, link=source.link(), repo_url=source.url)
        try:
            result = agent.run_cycle()
        finally:
            agent.close()
    state = Journal(config.state_dir / "journal.json").read()
    return 0 if result.completed and state.update is None else 1


def status_lines(config: ClientConfig) -> list[str]:
    """Describe the vehicle's boot state, slots, update in progress and queued events.

    Raises:
        ClientError: The state cannot be read.
    """
    boot = open_boot_control(
        config.slots.backend, directory=config.slots.directory, env=config.slots.env
    ).read_state()
    trial = f", slot {boot.trying} on trial ({boot.tries_left} tries left)" if boot.trying else ""
    lines = [f"boot: slot {boot.booted} booted, slot {boot.committed} committed{trial}"]
    for slot, image in SlotInventory(config.slots.directory).read().items():
        held = "unknown" if image is None else f"{image.target} (sha256 {image.sha256[:12]}…)"
        lines.append(f"slot {slot}: {held}")
    update = Journal(config.state_dir / "journal.json").read().update
    if update is None:
        lines.append("no update in progress")
    else:
        lines.append(f"assignment {update.assignment_id}: next step {update.phase}")
        if update.install_not_before or update.install_not_after:
            lines.append(f"maintenance window: {update.window_text()}")
    lines.append(f"{len(Outbox(config.state_dir / 'outbox'))} events queued")
    return lines
