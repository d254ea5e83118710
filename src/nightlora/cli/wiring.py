"""The one place that builds the real parts every command needs, from the config and the registries.

Commands call these; the core never builds its own side effects.
"""

from __future__ import annotations

from typing import Any

from nightlora.cli.common import info
from nightlora.config import Config
from nightlora.kinds import kind_of
from nightlora.models import model_to_serve
from nightlora.paths import StatePaths
from nightlora.pipeline.night import RunDeps
from nightlora.platform.disk import free_bytes
from nightlora.platform.memory import read_memory
from nightlora.platform.notify import make_notifier
from nightlora.platform.power import read_power
from nightlora.platform.runner import CommandRunner, SubprocessRunner
from nightlora.sources.base import Source
from nightlora.sources.registry import SOURCES
from nightlora.state.store import AdapterStore
from nightlora.targets.base import Target
from nightlora.targets.deploy import served
from nightlora.targets.registry import TARGETS
from nightlora.teachers.base import Teacher
from nightlora.teachers.registry import TEACHERS
from nightlora.train.registry import make_trainer


def build_source(cfg: Config) -> Source:
    return kind_of(SOURCES, cfg.source.kind, "source").load()(cfg.source)


def build_target(cfg: Config, runner: CommandRunner | None = None) -> Target:
    """The configured target, set up to serve the store's live version on a plain start."""
    state = StatePaths(cfg.source.state_path)
    store = AdapterStore(state.adapters)
    fmt = cfg.target.adapter_format
    live = store.current()
    factory = kind_of(TARGETS, cfg.target.kind, "target").load()
    return factory(cfg.target, state=state, model=model_to_serve(cfg.train.model, cfg.models_dir),
                   runner=runner or SubprocessRunner(),
                   live=served(store, fmt, live) if live is not None and fmt in live.formats else None)


def build_teacher(cfg: Config, runner: CommandRunner | None = None, *, even_if_disabled: bool = False) -> Teacher | None:
    """The configured teacher; None when ``teacher.enabled`` is false (unless ``even_if_disabled``)."""
    if not (cfg.teacher.enabled or even_if_disabled):
        return None
    factory = kind_of(TEACHERS, cfg.teacher.kind, "teacher").load()
    # Whether it may see unredacted text is checked where text is sent (teachers/distill.py), so that a
    # wrong privacy setting never stands in the way of commands that send nothing (server stop, recover).
    return factory(cfg.teacher, runner=runner or SubprocessRunner())


def _progress(bar: bool) -> Any:
    bars: dict[str, Any] = {}

    def show_progress(event: Any) -> None:
        from nightlora.train.progress import TqdmProgress

        b = bars.get("train") or bars.setdefault("train", TqdmProgress(event.total))
        b(event)
        if event.step >= event.total:
            bars.pop("train").close()

    def log_progress(event: Any) -> None:
        # Without a terminal (the nightly job's log), one line per validation and per tenth of the run.
        tenth = max(1, event.total // 10)
        if event.message or event.valid_loss is not None or (event.step % tenth == 0 and event.train_loss is not None):
            parts = [f"step {event.step}/{event.total}"]
            if event.train_loss is not None:
                parts.append(f"loss {event.train_loss:.3f}")
            if event.valid_loss is not None:
                parts.append(f"validation loss {event.valid_loss:.3f}")
            if event.tokens_per_second:
                parts.append(f"{event.tokens_per_second:.0f} tokens/s")
            info("  " + ", ".join(parts) + (f" ({event.message})" if event.message else ""))

    return show_progress if bar else log_progress


def build_deps(cfg: Config, *, progress: bool = True) -> RunDeps:
    """The real side effects: subprocesses, HTTP to the server, notifications, /proc/meminfo.

    ``progress``: a progress bar; otherwise a log line per validation and per tenth of training.
    """
    runner = SubprocessRunner()
    source = build_source(cfg)
    target = build_target(cfg, runner)
    return RunDeps(
        source=source,
        target=target,
        trainer_for=make_trainer,
        notifier=make_notifier(runner, log=info),
        read_memory=lambda: read_memory(runner),
        read_power=lambda: read_power(runner),
        free_disk=free_bytes,
        teacher=build_teacher(cfg, runner),
        progress=_progress(progress),
        log=info,
    )


def build_doctor_deps(cfg: Config, config_path: Any = None, *, debug: bool = False) -> Any:
    """The real side effects `nightlora doctor` reads through (it writes nothing, starts nothing)."""
    from pathlib import Path

    from nightlora.doctor.checks import DoctorDeps
    from nightlora.schedule import make_schedule

    runner = SubprocessRunner()
    path = config_path
    if path is None:
        import os

        from nightlora.config import CONFIG_ENV, default_config_path

        path = Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else (
            default_config_path() if default_config_path().is_file() else None)
    return DoctorDeps(
        source=build_source,
        target=lambda c: build_target(c, runner),
        trainer=make_trainer,
        schedule=lambda c, argv: make_schedule(argv, c.source.state_path, runner,
                                               backend=None if c.schedule.backend == "auto" else c.schedule.backend),
        runner=runner,
        read_memory=lambda: read_memory(runner),
        read_power=lambda: read_power(runner),
        free_disk=free_bytes,
        config_path=path,
        debug=debug,
    )
