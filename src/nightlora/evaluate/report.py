"""``report.html`` and ``loss.png`` in a run folder: what a person wants to read about a night.

The data counts and skipped rows, the loss curves, the evaluation table (base / live /
candidate), the decision and why, the probe questions and a few held-out prompts with the
base model's and the candidate's answers side by side.  HTML through jinja2 (every value
escaped), the plot through matplotlib; both from the run's own records (result.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from nightlora.platform.fsutil import atomic_write_bytes, atomic_write_text

TEMPLATE = "report.html.jinja"


def loss_plot(result: dict[str, Any], path: Path) -> bool:
    """The training and validation loss curves as a PNG; False when the run has none."""
    metrics = ((result.get("train") or {}).get("metrics") or {})
    train, valid = metrics.get("train_loss") or [], metrics.get("valid_loss") or []
    if not train and not valid:
        return False
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="training loss", color="#4c72b0", alpha=0.8)
    if valid:
        ax.plot([s for s, _ in valid], [v for _, v in valid], "o-", label="validation loss", color="#dd8452")
    best = metrics.get("best_step")
    if best is not None:
        ax.axvline(best, color="#55a868", linestyle=":", label=f"kept weights (step {best})")
    ax.set_xlabel("step")
    ax.set_ylabel("mean loss per target token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def _pct(new: float | None, old: float | None) -> str:
    if new is None or not old:
        return ""
    return f"{100 * (new / old - 1):+.1f} %"


def context(result: dict[str, Any], plot_name: str | None) -> dict[str, Any]:
    """What the template shows, from result.json."""
    ev = result.get("evaluation") or {}
    scores = ev.get("scores") or {}
    base = scores.get("base") or {}
    rows = []
    # "with DPO"/"with KTO": the candidate before the gate fell back to its SFT adapter (stages/evaluate.py).
    for name in ("base", "live", *(k for k in scores if k.startswith("with ")), "candidate"):
        s = scores.get(name)
        if not s:
            continue
        rows.append({
            "name": name, "adapter": s.get("adapter") or "",
            "test_loss": s.get("test_loss"), "test_change": _pct(s.get("test_loss"), base.get("test_loss")),
            "general_loss": s.get("general_loss"),
            "general_change": _pct(s.get("general_loss"), base.get("general_loss")),
            "preference_accuracy": s.get("preference_accuracy"), "preference_pairs": s.get("preference_pairs"),
            "probe": f"{s['probe_correct']}/{s['probe_total']}" if s.get("probe_total") else "",
            "smoke": f"{s.get('smoke_failures', 0)} of {len(s.get('smoke_problems') or [])}",
        })
    cand = scores.get("candidate") or {}
    probe = [{"question": q, "base": b, "candidate": c} for q, b, c in zip(
        ev.get("probe_questions_text") or [], base.get("probe_replies") or [], cand.get("probe_replies") or [])]
    smoke = [{"prompt": p, "base": b, "candidate": c} for p, b, c in zip(
        ev.get("smoke_prompts_text") or [], base.get("smoke_replies") or [], cand.get("smoke_replies") or [])]
    export = result.get("export") or {}
    train = result.get("train") or {}
    return {
        "result": result, "rows": rows, "decision": ev.get("decision"), "probe": probe, "smoke": smoke,
        "counts": export.get("counts") or {}, "conversations": export.get("conversations") or {},
        "skipped": {k: len(v) for k, v in (export.get("skipped") or {}).items()},
        "feedback": result.get("feedback") or {}, "hyperparams": train.get("hyperparams") or {},
        "metrics": train.get("metrics") or {}, "plot": plot_name, "score": ev.get("score"),
    }


def render(result: dict[str, Any], plot_name: str | None) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("nightlora.evaluate", "."), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v, digits=3: "" if v is None else f"{v:.{digits}f}"
    return env.get_template(TEMPLATE).render(**context(result, plot_name))


def write_report(result: dict[str, Any], run_dir: Path, report: Path, plot: Path) -> Path:
    has_plot = loss_plot(result, plot)
    atomic_write_text(report, render(result, plot.name if has_plot else None))
    return report


def summary(result: dict[str, Any]) -> str:
    """A few lines for `nightlora report`."""
    lines = [f"{result.get('status')}: {result.get('message')}"]
    ev = result.get("evaluation") or {}
    for name, s in (ev.get("scores") or {}).items():
        parts = [f"{name:<9}"]
        if s.get("test_loss") is not None:
            parts.append(f"held-out loss {s['test_loss']:.3f}")
        if s.get("general_loss") is not None:
            parts.append(f"general loss {s['general_loss']:.3f}")
        if s.get("preference_accuracy") is not None:
            parts.append(f"preference accuracy {s['preference_accuracy']:.2f}")
        if s.get("probe_total"):
            parts.append(f"probe {s['probe_correct']}/{s['probe_total']}")
        lines.append("  " + ", ".join(parts))
    if ev.get("decision"):
        lines.append(ev["decision"]["summary"])
    return "\n".join(lines)
