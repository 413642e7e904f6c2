"""Renewed tokens on disk, so a restart does not begin with expired ones.

Kept apart from the pool: this is the only code that writes credentials to
disk, and it must never leave a half-written file or touch the user's own
``config.json`` and ``cookie.txt``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: A temp file this old was left by a process that died mid-write; a live write takes milliseconds,
#: and another worker's write in progress must not lose its file.
STRAY_AGE = 60.0


class TokenStore:
    """Renewed tokens on disk, so a restart does not start from expired ones.

    The user's own ``config.json`` and ``cookie.txt`` are never rewritten: the
    store is a separate JSON file of entries keyed by a hash of each
    configured credential. Writes are atomic (temp file, fsync, rename) and the previous
    file is kept as ``<file>.bak``; a damaged file falls back to the backup.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.backup = self.path.with_name(self.path.name + ".bak")
        self._lock = threading.Lock()
        self.remove_strays()

    def remove_strays(self, now: float | None = None) -> int:
        """Delete temp files a killed process left beside the store (they hold tokens); how many."""
        now = time.time() if now is None else now
        removed = 0
        for target in (self.path, self.backup):
            for stray in target.parent.glob(f".{target.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    if now - stray.stat().st_mtime > STRAY_AGE:
                        stray.unlink()
                        removed += 1
        if removed:
            logger.info("removed %d stray temp file(s) of the token store %s", removed, self.path)
        return removed

    def load(self) -> dict[str, dict[str, Any]]:
        for candidate in (self.path, self.backup):
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                logger.warning("token store %s is unreadable (%s); trying its backup", candidate, exc)
                continue
            accounts = data.get("accounts") if isinstance(data, dict) else None
            if isinstance(accounts, dict):
                return {k: v for k, v in accounts.items() if isinstance(v, dict)}
        return {}

    def save(self, accounts: dict[str, dict[str, Any]]) -> None:
        """Write every account's entry; a failure is logged, never raised into a turn."""
        body = json.dumps({"version": 1, "accounts": accounts}, indent=2).encode()
        with self._lock:
            try:
                self._write(body)
            except OSError as exc:
                logger.warning("could not save renewed tokens to %s: %s", self.path, exc)

    def _write(self, body: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _atomic_write(self.backup, self.path.read_bytes())
        _atomic_write(self.path, body)


def _atomic_write(path: Path, body: bytes) -> None:
    """Write to a temp file beside ``path``, fsync, then rename over it: never a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # it holds tokens
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

