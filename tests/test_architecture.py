"""What must never import what (docs/architecture.md), checked on the source's own imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "nightlora"

# package -> packages of nightlora it must never import (at any depth, deferred imports included).
NEVER = {
    "platform": {"cli", "pipeline", "sources", "targets", "train", "evaluate", "dataset", "state", "demo", "config",
                 "teachers"},
    "state": {"cli", "pipeline", "sources", "targets", "train", "evaluate", "dataset", "demo", "teachers"},
    "dataset": {"cli", "pipeline", "targets", "train", "evaluate", "state", "demo", "sources.hanni", "teachers"},
    "sources": {"cli", "pipeline", "targets", "train", "evaluate", "demo", "teachers"},
    "targets": {"cli", "pipeline", "sources", "train", "evaluate", "dataset", "demo", "teachers"},
    "train": {"cli", "pipeline", "sources", "targets", "state", "demo", "teachers"},
    "evaluate": {"cli", "pipeline", "sources", "targets", "state", "demo", "teachers"},
    # teachers read and write the export's files (dataset/) and nothing of the night or its other parts
    "teachers": {"cli", "pipeline", "sources", "targets", "train", "evaluate", "state", "demo"},
    "pipeline": {"cli", "demo"},
    "demo": {"cli", "pipeline"},
    "doctor": {"cli", "demo"},
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m[len("nightlora."):] for m in found if m.startswith("nightlora.")}


def test_layers_import_only_what_they_may():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if len(rel.parts) < 2:
            continue
        banned = NEVER.get(rel.parts[0], set())
        for mod in imports_of(path):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                problems.append(f"{rel} imports nightlora.{mod}")
    assert problems == []


def test_pipeline_gets_kinds_through_its_deps_not_by_name():
    """Stages never build a source or a target themselves: cli/wiring.py does, from the registries."""
    for path in sorted((SRC / "pipeline").rglob("*.py")):
        for mod in imports_of(path):
            assert not mod.startswith(("sources.hanni", "targets.mlx_lm", "targets.none", "train.mlx", "train.torch",
                                  "teachers.claude_cli", "teachers.openai_api", "teachers.anthropic_api")), \
                f"{path.relative_to(SRC)} imports nightlora.{mod}"
