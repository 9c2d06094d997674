"""A local mailbox for the embedded stack: an SMTP server on loopback that keeps each message as a file.

``dsr dev`` and the demo start it on ``notify.smtp_host:smtp_port`` when that is a loopback
address nobody else serves, so that subject and administrator notices can be read in
``<state>/mail/`` without a mail server. Production points ``[notify]`` at a real relay.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Keep:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._n = itertools.count(len(list(folder.glob("*.eml"))) + 1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        path = self.folder / f"{next(self._n):06d}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(envelope.original_content or envelope.content)
        return "250 Message accepted"


class DevMailbox:
    """The running mailbox; ``stop()`` ends it."""

    def __init__(self, folder: Path, host: str, port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = folder
        self._controller = Controller(_Keep(folder), hostname=host, port=port)
        # aiosmtpd logs every envelope's recipients at DEBUG/INFO: the subject's address must not reach the logs.
        logging.getLogger("mail.log").setLevel(logging.WARNING)

    def start(self) -> DevMailbox:
        """Start serving."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop serving (the messages stay)."""
        self._controller.stop()
