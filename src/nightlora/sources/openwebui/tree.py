"""A chat's message tree (``history.messages``: id -> message with ``parentId``), as paths.

Open WebUI keeps every regeneration and every edited user turn as a branch; the visible
branch is only the one ``history.currentId`` ends.  What a rated reply answered is the
path from the root to it, by ``parentId`` (open_webui/utils/misc.py ``get_message_list``),
whichever branch is visible now.  Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

Messages = Mapping[str, Any]


def path_to(messages: Messages, message_id: str) -> tuple[list[str], str | None]:
    """The ids from the root to ``message_id``, and what was wrong on the way, if anything:
    ``history_cycle`` (parent links loop: no path), ``path_truncated`` (a parent id missing from
    the history: the path starts below it, as Open WebUI's own walk does)."""
    ids: list[str] = []
    seen: set[str] = set()
    current: Any = message_id
    while current is not None:
        if not isinstance(current, str):
            return [], "history_cycle" if current in seen else "bad_parent"
        if current in seen:
            return [], "history_cycle"
        msg = messages.get(current)
        if not isinstance(msg, dict):
            if not ids:
                return [], "message_missing"
            ids.reverse()
            return ids, "path_truncated"
        seen.add(current)
        ids.append(current)
        current = msg.get("parentId")
    ids.reverse()
    return ids, None


def leaves(paths: Mapping[str, list[str]]) -> list[str]:
    """The rated messages whose path no other rated message's path goes through, in the given order."""
    inner = {mid for p in paths.values() for mid in p[:-1]}
    return [mid for mid in paths if mid not in inner]


def siblings(messages: Messages, message_id: str) -> list[str]:
    """Other replies to the same parent message (regenerations, other models' answers), in history order."""
    msg = messages.get(message_id)
    parent = msg.get("parentId") if isinstance(msg, dict) else None
    if parent is None:
        return []
    return [mid for mid, m in messages.items()
            if mid != message_id and isinstance(m, dict) and m.get("parentId") == parent and m.get("role") == msg.get("role")]


def timestamp(msg: Any) -> float:
    t = msg.get("timestamp") if isinstance(msg, dict) else None
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return 0.0
    try:
        return float(t)
    except OverflowError:  # an integer beyond any float: after (or before) every real time
        return float("inf") if t > 0 else float("-inf")


def ordered(messages: Messages, ids: Iterable[str]) -> list[str]:
    """Ids by message time, then id (a stable order whatever the JSON object order)."""
    return sorted(ids, key=lambda mid: (timestamp(messages.get(mid)), mid))
