"""Keeping identical examples once, in memory that does not grow with the database.

A Python set of digests costs ~100 bytes per example and grows with every night's data;
a private temporary SQLite table holds the same 16-byte digests in a B-tree whose page
cache is capped, spilling to a temp file beyond that.  That is the price of bounded memory:
at 100,000 conversations the inserts are about a fifth of an export's time (see
bench/export_speed.py); batching them or a Bloom filter in front saved little.
"""

from __future__ import annotations

import hashlib
import sqlite3

DIGEST_BYTES = 16
CACHE_KIB = 2048


def digest_of(data: bytes) -> bytes:
    # SHA-256 rather than BLAKE2b: CPUs with SHA instructions (recent x86, Apple silicon)
    # hash a typical 1 KB example two to three times faster with it.
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


class SeenDigests:
    def __init__(self) -> None:
        # "" opens a private temporary on-disk database, deleted when closed.
        self._conn = sqlite3.connect("", isolation_level=None)
        self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._conn.execute("PRAGMA journal_mode = OFF")
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute("CREATE TABLE seen (digest BLOB PRIMARY KEY) WITHOUT ROWID")
        self._conn.execute("BEGIN")
        self._insert = self._conn.cursor()  # one cursor: creating one per call costs more than the insert

    def add(self, digest: bytes) -> bool:
        """Remember ``digest`` (from ``digest_of``); True when it was not seen before."""
        return self._insert.execute("INSERT OR IGNORE INTO seen VALUES (?)", (digest,)).rowcount == 1

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SeenDigests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
