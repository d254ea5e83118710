"""Which split a conversation belongs to: a stable hash of its id, nothing else.

Position-based splits let a test conversation drift into training on a later night as
rows are added; a hash of the id keeps every conversation in the same split forever
(as long as the percentages stay the same), and keeps all its examples together.
"""

from __future__ import annotations

import hashlib

from nightlora.paths import SPLITS  # noqa: F401  (re-exported: the split names)
_SALT = b"nightlora-split-v1:"


def split_of(conversation_id: int | str, percentages: tuple[int, int, int] = (80, 10, 10)) -> str:
    bucket = int.from_bytes(hashlib.sha256(_SALT + str(conversation_id).encode()).digest()[:8], "big") % 100
    train, valid, _ = percentages
    if bucket < train:
        return "train"
    if bucket < train + valid:
        return "valid"
    return "test"
