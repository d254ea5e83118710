"""`nightlora doctor`: every part a night needs, checked in the order a night uses them.

Each check is a function of the config and the side effects passed in (``DoctorDeps``; the CLI
builds the real ones in cli/wiring.py) and returns one ``Finding``: ok, warn (a night still
runs, but something is off) or fail (a night would fail or do harm), with the fix in words.
A check never raises: an unexpected error is itself a failing finding naming the check.
Nothing here writes anything, starts or stops a server, or reads message text.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from nightlora.config import Config
from nightlora.errors import NightloraError
from nightlora.models import base_model
from nightlora.paths import StatePaths
from nightlora.pipeline.guards import MiB, adapter_bytes, check_disk, check_memory, check_power
from nightlora.platform.memory import MemoryInfo
from nightlora.platform.net import is_loopback_host, port_in_use
from nightlora.platform.power import PowerState
from nightlora.platform.runner import CommandRunner
from nightlora.schedule import Schedule, find_old_agents, nightly_argv
from nightlora.sources.base import Source
from nightlora.targets.base import Target
from nightlora.targets.downtime import estimate_training_bytes, model_shape

Level = Literal["ok", "warn", "fail", "skip"]  # skip: not checked, because a check it needs failed


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DoctorDeps:
    """The side effects the checks use; the CLI passes the real ones, tests their stand-ins."""

    source: Callable[[Config], Source]
    target: Callable[[Config], Target]
    trainer: Callable[[str], Any]                 # make_trainer: imports the backend's framework
    schedule: Callable[[Config, list[str]], Schedule]
    runner: CommandRunner
    read_memory: Callable[[], MemoryInfo | None]
    read_power: Callable[[], PowerState | None]
    free_disk: Callable[[Path], int | None]
    config_path: Path | None = None
    platform: str = sys.platform
    which: Callable[[str], str | None] = shutil.which
    agents_dir: Path | None = None                # ~/Library/LaunchAgents
    debug: bool = False                           # a check that breaks raises (the traceback) instead of reporting
    _cache: dict[str, Any] = field(default_factory=dict)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def _source(cfg: Config, deps: DoctorDeps) -> Source:
    return deps.cached("source", lambda: deps.source(cfg))


def _target(cfg: Config, deps: DoctorDeps) -> Target:
    return deps.cached("target", lambda: deps.target(cfg))


def _model(cfg: Config, deps: DoctorDeps) -> Path:
    return deps.cached("model", lambda: base_model(cfg.train.model, cfg.models_dir, _target(cfg, deps).served_model()))


# ---- the checks ----------------------------------------------------------------------------


def check_database(cfg: Config, deps: DoctorDeps) -> Finding:
    source = _source(cfg, deps)
    try:
        with source.snapshot() as snap:
            counts = snap.counts(cfg.data.min_feedback)
            orphans = snap.orphans()
    except NightloraError as e:
        return Finding("database", "fail", str(e),
                       "point source.db (or source.data_dir) at the app's database: `nightlora init --db PATH`, "
                       "or open the app once so that it creates it")
    note = f"; {orphans} ratings point at conversations that do not exist (skipped)" if orphans else ""
    return Finding("database", "ok", f"{source.location}: readable, schema as expected, {counts.total} new ratings{note}")


def _regular_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a plain file without blocking (a FIFO would hang a reader)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    return None


def check_system_prompt(cfg: Config, deps: DoctorDeps) -> Finding:
    source = _source(cfg, deps)
    path = source.system_prompt_path
    if path is None:
        return Finding("system prompt", "ok", "none configured: examples use the chat's own or the built-in prompt")
    problem = _regular_file_problem(path)
    if problem:
        return Finding("system prompt", "fail", problem, f"make {path} the app's prompt as a text file, or set source.system_prompt")
    try:
        prompt, warnings = source.system_prompt()
    except NightloraError as e:
        return Finding("system prompt", "fail", str(e), f"save {path} as UTF-8 text")
    if warnings:
        return Finding("system prompt", "warn", "; ".join(warnings),
                       f"write the app's system prompt to {path} (the built-in one is not what the app sends)")
    return Finding("system prompt", "ok", f"{path}: {len(prompt.text)} characters")


def _running_model(target: Target) -> str | None:
    """The --model of the server running now, where we can see its command (the process manager's pid file)."""
    manager = getattr(target, "manager", None)
    record = getattr(manager, "record", None)
    if record is None or not target.is_running():
        return None
    rec = record()
    argv = rec.argv if rec is not None else []
    return argv[argv.index("--model") + 1] if "--model" in argv[:-1] else None


def check_model(cfg: Config, deps: DoctorDeps) -> Finding:
    try:
        model = _model(cfg, deps)
    except NightloraError as e:
        return Finding("model", "fail", str(e), "set train.model to a model folder (or a name `nightlora model prepare` "
                       "knows, prepared), or unset it to train the model the server serves")
    if not (model / "config.json").is_file():
        return Finding("model", "fail", f"{model} has no config.json", "point train.model at a Hugging Face model folder")
    running = _running_model(_target(cfg, deps))
    if running is not None and Path(running).expanduser().resolve() != model.resolve():
        return Finding("model", "fail", f"the server running now serves {running}, nightlora trains {model}: "
                       "its adapters would not fit", "restart the server (`nightlora server stop` then `start`) or set "
                       "train.model to the served model")
    served = " (the one the server serves)" if running or _target(cfg, deps).served_model() else ""
    return Finding("model", "ok", f"{model}{served}")


def check_backend(cfg: Config, deps: DoctorDeps) -> Finding:
    try:
        trainer = deps.trainer(cfg.train.backend)
    except NightloraError as e:
        return Finding("training backend", "fail", str(e), "install the backend: pip install 'nightlora[torch]' (or [mlx])")
    return Finding("training backend", "ok", f"{trainer.name} imports")


def _server_argv(cfg: Config) -> list[str] | None:
    t = cfg.target
    if t.kind != "mlx_lm":
        return None
    if t.manager == "launchd":
        from nightlora.targets.mlx_lm.launchd import read_plist

        plist = Path(os.path.expanduser(str(t.plist)))
        if plist.is_file():
            return [str(a) for a in read_plist(plist).get("ProgramArguments", [])]
    from nightlora.targets.mlx_lm.command import build_argv

    return build_argv(t.command, python=sys.executable, model="MODEL", adapter=None, host=t.host, port=t.port)


def check_server_command(cfg: Config, deps: DoctorDeps) -> Finding:
    try:
        argv = _server_argv(cfg)
    except NightloraError as e:
        return Finding("server command", "fail", str(e), "fix target.command (a list of arguments)")
    if argv is None:
        return Finding("server command", "ok", f"target.kind = {cfg.target.kind}: nightlora runs no server")
    if not argv:
        return Finding("server command", "fail", "the server command is empty", "set target.command")
    exe = argv[0] if os.sep in argv[0] else deps.which(argv[0])
    if exe is None or not os.access(exe, os.X_OK) or not Path(exe).is_file():
        return Finding("server command", "fail", f"{argv[0]} is not an executable program",
                       "install it, or give its full path as the first element of target.command")
    if len(argv) > 2 and argv[1] == "-m":
        probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"
        r = deps.runner.run([exe, "-c", probe, argv[2]], timeout=60)
        if not r.ok:
            return Finding("server command", "fail", f"{exe} cannot import {argv[2]}",
                           f"install it into that Python: {exe} -m pip install {argv[2].replace('_', '-')}")
    return Finding("server command", "ok", " ".join(argv[:4]) + (" ..." if len(argv) > 4 else ""))


def check_port(cfg: Config, deps: DoctorDeps) -> Finding:
    t = cfg.target
    if t.kind != "mlx_lm":
        return Finding("server port", "ok", f"target.kind = {t.kind}: not ours to bind")
    where = f"{t.host}:{t.port}"
    # A wildcard address (0.0.0.0, ::) is reached on the loopback but listens on every interface.
    if t.host.strip() in ("", "0.0.0.0", "::", "[::]") or not is_loopback_host(t.host):
        return Finding("server port", "warn", f"the server listens on {where}: reachable from other machines, "
                       "and its answers are the user's conversations", "set target.host = \"127.0.0.1\"")
    if not port_in_use(t.host, t.port):
        return Finding("server port", "ok", f"{where} is free (the server is not running: `nightlora server start`)")
    target = _target(cfg, deps)
    if not target.is_running():
        return Finding("server port", "fail", f"{where} is in use by a program nightlora did not start",
                       "stop that program, or choose another target.port (and the app's server URL with it)")
    h = target.health(timeout=10.0)
    if not h.ok:
        return Finding("server port", "warn", f"our server on {where} runs but does not answer: {h.reason}",
                       "`nightlora recover` (or `nightlora server stop` then `start`)")
    return Finding("server port", "ok", f"{where}: our server, answering")


def check_schedule(cfg: Config, deps: DoctorDeps) -> Finding:
    expected = nightly_argv(deps.config_path)
    try:
        sched = deps.schedule(cfg, expected)
        st = sched.status()
    except NightloraError as e:
        return Finding("schedule", "fail", str(e), "`nightlora schedule remove` then `nightlora schedule install`")
    if not st.installed:
        return Finding("schedule", "fail", f"no nightly run installed ({st.backend})",
                       f"`nightlora schedule install --at {cfg.schedule.at}`")
    if st.loaded is False:
        return Finding("schedule", "fail", f"installed ({', '.join(st.files)}) but not loaded", "`nightlora schedule install` again")
    if st.command and list(st.command) != expected:
        return Finding("schedule", "warn", f"the nightly job runs {' '.join(st.command)}, not {' '.join(expected)}",
                       "`nightlora schedule install` again from the environment and config you use")
    return Finding("schedule", "ok", f"every night at {st.at} ({st.backend})")


def check_old_jobs(cfg: Config, deps: DoctorDeps) -> Finding:
    labels = tuple(getattr(cfg.source, "old_agents", ()))
    if not labels:
        return Finding("old nightly job", "ok", "this app has no nightly job of its own")
    if deps.platform != "darwin":
        return Finding("old nightly job", "ok", f"{', '.join(labels)}: LaunchAgents, macOS only")
    agents = find_old_agents(labels, deps.runner, agents_dir=deps.agents_dir)
    competing = [a for a in agents if not a.disabled]
    if competing:
        return Finding("old nightly job", "fail", "; ".join(a.note() for a in competing),
                       "`nightlora schedule install --disable-old-agent`")
    return Finding("old nightly job", "ok", "; ".join(a.note() for a in agents) if agents else f"{', '.join(labels)} not installed")


def _db_bytes(cfg: Config) -> int:
    p = getattr(cfg.source, "db_path", None)
    try:
        return p.stat().st_size if p is not None else 0
    except OSError:
        return 0


def check_disk_space(cfg: Config, deps: DoctorDeps) -> Finding:
    state = StatePaths(cfg.source.state_path).root
    try:
        one = adapter_bytes(model_shape(_model(cfg, deps)), cfg.train.lora_rank, cfg.train.num_layers)
    except NightloraError:
        one = 0
    # The export is about as large as the conversations it reads: the database's size stands for it.
    g = check_disk(deps.free_disk(state), dataset_bytes=_db_bytes(cfg), one_adapter_bytes=one,
                   headroom_bytes=cfg.guard.disk_headroom_mb * MiB, where=str(state))
    return Finding("disk", "ok" if g.ok else "fail", g.reason, g.fix)


def check_memory_now(cfg: Config, deps: DoctorDeps) -> Finding:
    try:
        model = _model(cfg, deps)
    except NightloraError:
        return Finding("memory", "skip", "not checked: no base model to size training by (see the model check)")
    shape = model_shape(model)
    need = estimate_training_bytes(shape, batch_size=cfg.train.batch_size or 1, seq_len=cfg.train.max_seq_length,
                                   lora_rank=cfg.train.lora_rank, lora_layers=cfg.train.num_layers, grad_checkpoint=True)
    stoppable = cfg.target.kind == "mlx_lm" and cfg.target.stop_during_training != "never"
    g = check_memory(deps.read_memory(), training_bytes=need, freeable_bytes=shape.weights_bytes if stoppable else 0)
    return Finding("memory", "ok" if g.ok else "fail", g.reason, g.fix)


def check_power_now(cfg: Config, deps: DoctorDeps) -> Finding:
    g = check_power(deps.read_power(), cfg.guard.on_battery)
    # On battery now is not a broken set-up: tonight's run would be postponed unless plugged in.
    return Finding("power", "ok" if g.ok else "warn", g.reason, g.fix)


def check_state_dir(cfg: Config, deps: DoctorDeps) -> Finding:
    root = StatePaths(cfg.source.state_path).root
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return Finding("state folder", "fail", f"{p} is not a folder: {root} cannot be created", "set source.state_dir")
    if not os.access(p, os.W_OK | os.X_OK):
        return Finding("state folder", "fail", f"{p} is not writable", f"make {p} writable by you, or set source.state_dir")
    if root.exists() and stat.S_IMODE(root.stat().st_mode) & 0o077:
        return Finding("state folder", "fail", f"{root} is readable by other users (mode {stat.S_IMODE(root.stat().st_mode):o}); "
                       "it holds your conversations", f"chmod 700 {root}")
    return Finding("state folder", "ok", f"{root}" + ("" if root.exists() else " (created by the first run)"))


CHECKS: tuple[tuple[str, Callable[[Config, DoctorDeps], Finding]], ...] = (
    ("database", check_database),
    ("system prompt", check_system_prompt),
    ("state folder", check_state_dir),
    ("model", check_model),
    ("training backend", check_backend),
    ("server command", check_server_command),
    ("server port", check_port),
    ("schedule", check_schedule),
    ("old nightly job", check_old_jobs),
    ("disk", check_disk_space),
    ("memory", check_memory_now),
    ("power", check_power_now),
)


def run_checks(cfg: Config, deps: DoctorDeps) -> list[Finding]:
    out = []
    for name, check in CHECKS:
        try:
            out.append(check(cfg, deps))
        except NightloraError as e:
            out.append(Finding(name, "fail", str(e)))
        except Exception as e:  # a check must never take the doctor down; say what broke, in one line
            if deps.debug:
                raise
            out.append(Finding(name, "fail", f"the check itself failed: {type(e).__name__}: {e}",
                               "report this (run with --debug for the traceback)"))
    return out


def table(findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "-   "}
    lines = [f"  {'CHECK':<{width}}  {'':4}  DETAIL"]
    for f in findings:
        lines.append(f"  {f.check:<{width}}  {mark[f.level]}  {f.detail}")
        if f.fix and f.level in ("warn", "fail"):
            lines.append(f"  {'':<{width}}        fix: {f.fix}")
    return "\n".join(lines)
