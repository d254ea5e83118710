"""Configuration: defaults < TOML file < environment < flags.

The core never sees raw dicts: each part gets its own typed, validated section.
Every problem in a file (unknown keys, wrong types) is reported at once, in one
line that names the file and each key.

Sections: ``[source]`` (which app's feedback; ``kind`` picks one of sources/registry.py),
``[data]`` (what the export keeps), ``[train]``, ``[eval]`` (the promotion rule), ``[target]`` (where adapters go live;
``kind`` picks one of targets/registry.py), ``[store]`` (adapter versions), ``[schedule]``,
``[teacher]`` (distillation, off by default; ``kind`` picks one of teachers/registry.py).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import platformdirs
from pydantic import Field, ValidationError, field_validator

from nightlora.config_section import Section, expand, parse_hh_mm, toml_str
from nightlora.platform.fsutil import read_regular_bytes
from nightlora.errors import ConfigError
from nightlora.kinds import config_union
from nightlora.sources.registry import SOURCES
from nightlora.targets.registry import TARGETS
from nightlora.teachers.registry import TEACHERS

ENV_PREFIX = "NIGHTLORA_"
CONFIG_ENV = "NIGHTLORA_CONFIG"

SourceConfig = config_union(SOURCES, default="hanni")
TargetConfig = config_union(TARGETS, default="mlx_lm")
TeacherConfig = config_union(TEACHERS, default="claude-cli")

# Keys of earlier versions, with what to do instead: a clear line rather than "unknown key".
REMOVED = {
    "server": "the [server] section is now [target] (kind = \"mlx_lm\"; manager = \"none\" is kind = \"none\")",
    "train.adapter_dir": "no longer used (adapters live in the store under source.state_dir); remove it",
    "server.keep_versions": "moved to [store] keep_versions",
}


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("nightlora", appauthor=False)) / "config.toml"


def default_models_dir() -> Path:
    return Path(platformdirs.user_cache_dir("nightlora", appauthor=False)) / "models"


class DataConfig(Section):
    training_dir: Path = Path("training")
    min_feedback: int = Field(10, ge=0)
    min_messages: int = Field(4, ge=0)
    # Percentages of conversations in train / valid / test, by a stable hash of the id.
    split: tuple[int, int, int] = (80, 10, 10)

    @field_validator("split")
    @classmethod
    def _split_sums_to_100(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if sum(v) != 100 or min(v) < 0:
            raise ValueError("must be three non-negative percentages that add up to 100")
        return v


class TrainConfig(Section):
    backend: Literal["auto", "mlx", "torch"] = "auto"
    # The base model, for training and serving alike: a local folder, a name `nightlora model prepare`
    # knows (e.g. smollm2-135m), or a hub id already in the local cache.  Unset: the model the server
    # is configured to serve (the `--model` of its LaunchAgent).
    model: str | None = None
    # Where `nightlora model prepare` caches converted models (names in `model` resolve here).
    models_dir: Path = Field(default_factory=default_models_dir)
    # None = chosen from the data (see nightlora.train.hyperparams); any number set here wins.
    epochs: float | None = Field(None, gt=0)
    iters: int | None = Field(None, ge=1)
    min_iters: int = Field(20, ge=1)
    max_iters: int = Field(1000, ge=1)
    batch_size: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    lora_rank: int = Field(16, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    num_layers: int | None = Field(None, ge=1)
    max_seq_length: int = Field(2048, ge=16)
    # auto: only when training without it would not fit in memory (it costs a third more time).
    grad_checkpoint: bool | Literal["auto"] = "auto"
    early_stopping_patience: int = Field(3, ge=0)
    eval_every: int | None = Field(None, ge=1)
    seed: int = 0
    # Train each conversation's targets in one sequence (exact: same loss, the history read once).
    merge_turns: bool = True
    # Self-replay: the base model's own answers to general prompts mixed in, per user conversation
    # (0 = none; None = chosen from the data, see nightlora.train.hyperparams).
    replay_share: float | None = Field(None, ge=0)
    # kl: replay answers are learned toward the base model's whole next-token distribution (a tighter
    # anchor than its greedy tokens; torch backend); ce: like any other example.
    replay_loss: Literal["kl", "ce"] = "kl"
    # Learning from thumbs-down after SFT (torch): auto (DPO on pairs, else KTO), dpo, kto or off.
    preference: Literal["auto", "dpo", "kto", "off"] = "auto"
    preference_beta: float = Field(0.1, gt=0)
    preference_learning_rate: float | None = Field(None, gt=0)
    preference_epochs: float = Field(2.0, gt=0)
    # CPU threads for the night's compute (training, evaluation); unset: all cores, one fewer while
    # the assistant's server keeps serving on this machine (pipeline/threads.py says why).
    threads: int | None = Field(None, ge=1)


class EvalConfig(Section):
    """The promotion rule (evaluate/gate.py): a candidate goes live only if it passes every part."""

    # False: only the old rule (finite test loss) decides. Not recommended: a worse night goes live.
    gate: bool = True
    # A held-out loss within this fraction of the live model's is a tie (it passes only with a
    # better probe or preference accuracy).
    tie_tolerance: float = Field(0.01, ge=0, lt=1)
    # The general loss may rise at most this fraction above the base model's.
    max_general_increase: float = Field(0.05, ge=0)
    # Held-out prompts the candidate must answer as well as the base model (non-empty, stops, no loop).
    smoke_prompts: int = Field(4, ge=0)


class StoreConfig(Section):
    # Adapter versions kept; the live one and the one before it are always kept.
    keep_versions: int = Field(5, ge=1)


class ScheduleConfig(Section):
    at: str = "03:00"
    # auto: launchd on macOS, a systemd user timer where systemd runs, else a crontab line.
    backend: Literal["auto", "launchd", "systemd", "cron"] = "auto"

    @field_validator("at")
    @classmethod
    def _hh_mm(cls, v: str) -> str:
        h, m = parse_hh_mm(v)
        return f"{h:02d}:{m:02d}"


class GuardConfig(Section):
    """Resource guards before training (pipeline/guards.py): a night that cannot finish well is postponed."""

    # On battery: postpone the night (the default: an hour of training empties a laptop), or train anyway.
    on_battery: Literal["postpone", "run"] = "postpone"
    # Free disk kept beyond what the night is estimated to write (dataset, adapter, checkpoints).
    disk_headroom_mb: int = Field(512, ge=0)
    # Postpone when training cannot fit in memory even with the server stopped and gradient checkpointing on.
    memory: bool = True


class Config(Section):
    source: SourceConfig = Field(default_factory=lambda: SOURCES["hanni"].config())  # type: ignore[valid-type]
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    target: TargetConfig = Field(default_factory=lambda: TARGETS["mlx_lm"].config())  # type: ignore[valid-type]
    store: StoreConfig = Field(default_factory=StoreConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    teacher: TeacherConfig = Field(default_factory=lambda: TEACHERS["claude-cli"].config())  # type: ignore[valid-type]

    @property
    def training_path(self) -> Path:
        return self.source.resolve(self.data.training_dir)

    @property
    def models_dir(self) -> Path:
        return expand(self.train.models_dir)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = value


def _parse_env_value(raw: str) -> Any:
    """Read an environment value as a TOML literal when it is one (10, true, [..]), else as text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """NIGHTLORA_TRAIN__BACKEND=torch -> {"train.backend": "torch"}."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
        out[dotted] = _parse_env_value(raw)
    return out


def _key(loc: tuple[Any, ...]) -> str:
    # A kind's section reports its tag in the location (source.hanni.db): drop it.
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("source", "target", "teacher") and parts[1] in {**SOURCES, **TARGETS, **TEACHERS, "?": 0}:
        parts.pop(1)
    return ".".join(parts)


def _format_errors(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        key = _key(e["loc"])
        if e["type"] == "extra_forbidden":
            msg = REMOVED.get(key, "unknown key")
        else:
            msg = e["msg"]
        parts.append(f"{key}: {msg}")
    return f"invalid config in {where}: " + "; ".join(parts)


def _removed_sections(tree: dict[str, Any], where: str) -> None:
    old = [k for k in tree if k in REMOVED]
    if old:
        raise ConfigError(f"invalid config in {where}: " + "; ".join(f"{k}: {REMOVED[k]}" for k in old))


CONFIG_MAX_BYTES = 1 << 20  # a config is a few KiB; anything this large is not one


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_regular_bytes(path, CONFIG_MAX_BYTES).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"invalid config in {path}: not UTF-8 text (byte {e.start})") from None
    except ValueError as e:  # tomllib.TOMLDecodeError, NUL included
        raise ConfigError(f"invalid config in {path}: {e}") from None
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except RecursionError:
        raise ConfigError(f"invalid config in {path}: nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None


def _validate(tree: dict[str, Any], where: str) -> Config:
    _removed_sections(tree, where)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config from defaults, then ``path``, then the environment, then ``overrides``.

    ``path=None`` uses $NIGHTLORA_CONFIG or the user config file when either exists.
    ``overrides`` maps dotted keys ("train.backend") to values; None values are ignored
    so that unset CLI flags do not override anything.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        env_path = environ.get(CONFIG_ENV)
        if env_path:
            path = Path(env_path)
        elif default_config_path().is_file():
            path = default_config_path()
    tree: dict[str, Any] = read_toml(Path(path)) if path is not None else {}
    _validate(tree, str(path) if path is not None else "defaults")

    env = env_overrides(environ)
    for dotted, value in env.items():
        _set_dotted(tree, dotted, value)
    if env:
        _validate(tree, "environment (NIGHTLORA_*)")

    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    return _validate(tree, "command-line flags")


PRESETS = ("hanni", "openwebui")


def _source_toml(name: str, db: Path | None) -> str:
    """The [source] section of a preset: every key of its kind, with comments."""
    if name == "hanni":
        # --db: the app's folder is the database's (its system prompt and training/ live beside it).
        s = SOURCES["hanni"].config()
        return f"""\
[source]
kind = "hanni"
data_dir = {toml_str(db.parent if db is not None else s.data_dir)}
db = {toml_str(db.name) if db is not None else '"hanni.db"'}
system_prompt = "system_prompt.txt"
state_dir = "nightlora"            # runs, adapter store, state db, lock, status.json
history_window = {s.history_window}                # the app sends its model its last 20 messages: contexts are cut so (0 = all)
proactive_targets = false          # the app's proactive messages answer no user turn: context only
"""
    s = SOURCES["openwebui"].config(kind="openwebui", **({"db": db} if db is not None else {}))
    return f"""\
[source]
kind = "openwebui"
db = {toml_str(s.db)}   # Open WebUI's database, read-only
data_dir = {toml_str(s.data_dir)}   # nightlora's own files for it
state_dir = "state"                # runs, adapter store, state db, lock, status.json
# system_prompt = "/path/to/prompt.txt"   # for chats without their own (chat or user settings) prompt; unset: none
user_ids = []                      # whose ratings (Open WebUI user ids; empty: everyone's)
model_ids = []                     # whose replies are learned, e.g. ["llama3.2:3b"]: the model this adapter is for
arena = false                      # arena (blind comparison) ratings too
history_window = 0                 # Open WebUI sends the whole path: 0 = all
"""


def preset_toml(name: str, *, db: Path | None = None) -> str:
    """The config file `nightlora init --preset NAME` writes: every key, with comments (``db``: the app's database)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    c = Config()
    t = c.target
    manager = "launchd" if sys.platform == "darwin" else "process"
    # Open WebUI: a path of one question and its reply is a whole example.
    min_messages = 2 if name == "openwebui" else c.data.min_messages
    target_note = (f"# Open WebUI talks to it: Settings > Connections > OpenAI API, http://{t.host}:{t.port}/v1\n"
                   if name == "openwebui" else "")
    return f"""\
# nightlora config (preset: {name}). Precedence: defaults < this file < NIGHTLORA_SECTION__KEY env < flags.
# Relative paths are inside source.data_dir.

{_source_toml(name, db)}
[data]
training_dir = "training"
min_feedback = {c.data.min_feedback}                  # rated messages (up or down) needed before a night trains
min_messages = {min_messages}                   # shorter conversations are not exported
split = [80, 10, 10]               # train / valid / test, by a stable hash of the conversation id

[train]
backend = "auto"                   # auto: mlx on Apple silicon, torch elsewhere
# model = "/path/to/model"         # unset: the model the assistant's server serves (its LaunchAgent's --model)
# epochs, iters, batch_size, learning_rate, num_layers: unset = chosen from the data
min_iters = {c.train.min_iters}
max_iters = {c.train.max_iters}
warmup_fraction = {c.train.warmup_fraction}
lora_rank = {c.train.lora_rank}
lora_alpha = {c.train.lora_alpha}
max_seq_length = {c.train.max_seq_length}
grad_checkpoint = "auto"           # auto: only when memory is short (it costs a third more time)
early_stopping_patience = {c.train.early_stopping_patience}
# threads = 4                      # unset: all cores, one left to the assistant's server while it serves beside training

[eval]
gate = true                        # a new adapter goes live only if it beats the live one (see README)
tie_tolerance = {c.eval.tie_tolerance}
max_general_increase = {c.eval.max_general_increase}        # at most this much worse than the base model on general prompts
smoke_prompts = {c.eval.smoke_prompts}

[target]
{target_note}kind = "mlx_lm"                    # mlx_lm (restarted on each new adapter) | vllm (switched live, no restart) | none (nightlora serves nothing)
manager = "{manager}"               # process | launchd | systemd
host = "{t.host}"
port = {t.port}
label = "{t.label}"
plist = "{t.plist}"
stop_during_training = "auto"      # auto | always | never
health_timeout = {t.health_timeout}

[store]
keep_versions = {c.store.keep_versions}

[schedule]
at = "{c.schedule.at}"
backend = "auto"                   # auto | launchd | systemd | cron

[guard]                            # checked before training; a night that cannot finish well is postponed
on_battery = "{c.guard.on_battery}"             # postpone | run
disk_headroom_mb = {c.guard.disk_headroom_mb}             # free disk kept beyond the night's estimate
memory = {str(c.guard.memory).lower()}                      # postpone when training cannot fit even with the server stopped

[teacher]                          # B3.4 distillation: a stronger model writes the replies that should have been given
kind = "claude-cli"                # claude-cli (the `claude` command) | openai (any OpenAI-compatible endpoint) | anthropic
enabled = false                    # it sends conversations (redacted) to the teacher: off until you turn it on
focus = "{c.teacher.focus}"                # negatives (thumbs-down replies) | agentic (requests to act) | all
count = {c.teacher.count}                         # prompts per night; each is asked once, then answered from the cache
max_requests = {c.teacher.max_requests}                  # requests per night, retries included
timeout_s = {c.teacher.timeout_s:g}
concurrency = {c.teacher.concurrency}
# kind = "openai":    base_url = "http://127.0.0.1:8080/v1", model = "...", api_key_env = "OPENAI_API_KEY"
# kind = "anthropic": model = "claude-sonnet-4-5", api_key_env = "ANTHROPIC_API_KEY"
"""
