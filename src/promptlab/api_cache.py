"""An on-disk cache of API responses: a rerun of the same requests costs no HTTP request and no money.

SQLite (stdlib) rather than one file per response: one file holds any number of them, writes are atomic, and
several runs (or threads) may share it. A key is the sha256 of everything that decides the answer: model, base
URL, endpoint and the full request body (decoding settings included). The API key is not part of it (it does not
change an answer) and is never stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from .errors import ConfigError, DiskFullError, disk_full

DEFAULT_DIR = Path("~/.cache/promptlab/api")
SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL)"


def request_key(model: str, base_url: str, endpoint: str, body: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "base_url": base_url.rstrip("/"), "endpoint": endpoint, "body": body},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """get/put by request key. One connection shared under a lock: SQLite serialises writes anyway, and the
    requests the lock waits on take milliseconds next to an API call's latency."""

    def __init__(self, directory: str | Path | None) -> None:
        self.root = Path(directory).expanduser() if directory is not None else None
        self.path = self.root / "responses.sqlite" if self.root is not None else None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection | None:
        """The database, opened at the first request (call under the lock): a run refused before it sends one
        leaves nothing on disk."""
        if self._db is None and self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")  # another run may read while this one writes
                db.execute(SCHEMA)
                db.commit()
            except (OSError, sqlite3.Error) as e:
                fix = "delete it, or pass another --api-cache DIR" if self.path.exists() else "pass a writable --api-cache DIR"
                raise ConfigError(f"cannot open the API response cache {self.path} ({e}); {fix}, or --api-cache "
                                  "off") from None
            self._db = db
        return self._db

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with self._lock:
                db = self._conn()
                row = db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone() if db else None
        except sqlite3.Error as e:
            raise ConfigError(f"cannot read the API response cache {self.path} ({e}); delete it, or pass another "
                              "--api-cache DIR") from None
        return json.loads(row[0]) if row else None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        try:
            with self._lock:
                db = self._conn()
                if db is None:
                    return
                db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)",
                           (key, json.dumps(request, ensure_ascii=False), json.dumps(response, ensure_ascii=False)))
                db.commit()
        except sqlite3.Error as e:
            if disk_full(e) or "disk is full" in str(e):  # SQLITE_FULL
                raise DiskFullError.writing(f"the API response cache {self.path}", e) from None
            raise ConfigError(f"cannot write the API response cache {self.path} ({e}); pass another --api-cache DIR, "
                              "or --api-cache off") from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
