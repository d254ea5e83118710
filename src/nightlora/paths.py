"""Every file name nightlora reads or writes, in one place.

    <state dir>/                   source.state_dir (Hanni: <data dir>/nightlora)
        state.db                   runs, deploys, consumed feedback (state/migrations.py)
        run.lock                   one run at a time (pipeline/lock.py)
        status.json                what the run is doing, for the app (state/status_file.py)
        server.pid                 the server the process manager started
        logs/server.log            its output; logs/nightly.log: the scheduled job's
        runs/<id>/                 one folder per night (RunPaths below)
        adapters/v0001 ... current the adapter store (state/store.py; AdapterFiles below)
        adapters-staging/          `nightlora train` without --out
        cache/                     the base model's answers to the general prompts (evaluate/general.py)
        teacher/cache.jsonl        distillation: the teachers' replies, by a hash of what was asked
        teacher/requests.jsonl     every request sent to a teacher, as sent (redacted)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A dataset folder (`nightlora export`, <run>/data/).
SPLITS = ("train", "valid", "test")
REPLAY = "replay.jsonl"  # self-replay examples the train stage adds beside train.jsonl (train split only)
PREFERENCES_STEM = "preferences"
PREFERENCES = f"{PREFERENCES_STEM}.jsonl"
MANIFEST = "manifest.json"
DATASET_FILES = (*(f"{s}.jsonl" for s in SPLITS), PREFERENCES, MANIFEST)
# Held-out questions about the user, beside the source's database (`nightlora demo-db` writes one).
PROBE = "probe.jsonl"


class AdapterFiles:
    """The files of an adapter folder, per format."""

    MLX_WEIGHTS = "adapters.safetensors"      # mlx_lm: `--adapter-path DIR` reads these two
    MLX_CONFIG = "adapter_config.json"
    PEFT_WEIGHTS = "adapter_model.safetensors"  # PEFT / vLLM / transformers
    PEFT_CONFIG = "adapter_config.json"
    TRAINER_META = "nightlora.json"           # written by the trainer: metrics, hyperparameters, data provenance
    VERSION_META = "version.json"             # written by the store: what it knows about a version
    PEFT_SUBDIR = "peft"                      # a version keeps PEFT files here, mlx_lm files at its top

    REQUIRED = {"mlx": (MLX_WEIGHTS, MLX_CONFIG), "peft": (PEFT_WEIGHTS, PEFT_CONFIG)}

    @staticmethod
    def sft_only(adapter_dir: Path) -> Path:
        """Beside an adapter trained with DPO/KTO after SFT: the same adapter before that stage,
        which the gate judges when the one with preference training fails it."""
        adapter_dir = Path(adapter_dir)
        return adapter_dir.with_name(adapter_dir.name + "-sft-only")

    @classmethod
    def format_of(cls, folder: Path) -> str | None:
        """"mlx" or "peft" by the files in ``folder`` (None: neither is complete)."""
        for fmt, names in cls.REQUIRED.items():
            if all((Path(folder) / n).is_file() for n in names):
                return fmt
        return None


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def server_pid(self) -> Path:
        return self.root / "server.pid"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def nightly_log(self) -> Path:
        return self.logs / "nightly.log"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def staging(self) -> Path:
        return self.root / "adapters-staging"

    @property
    def cache(self) -> Path:
        """What is computed once per base model (the base model's answers to the general prompts)."""
        return self.root / "cache"

    @property
    def teacher_cache(self) -> Path:
        return self.root / "teacher" / "cache.jsonl"

    @property
    def teacher_log(self) -> Path:
        return self.root / "teacher" / "requests.jsonl"


@dataclass(frozen=True)
class RunPaths:
    """One night's folder: every stage reads and writes here, so each can also run alone."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    def adapter(self, backend: str) -> Path:
        return self.root / f"adapter-{backend}"

    def converted(self, fmt: str) -> Path:
        return self.root / f"adapter-as-{fmt}"

    def live_as(self, fmt: str) -> Path:
        """The live adapter converted for the evaluation, when the store lacks the backend's format."""
        return self.root / f"live-as-{fmt}"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"
