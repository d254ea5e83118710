"""The `nightlora` command. Commands read flags and config; the stage modules do the work."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click

from nightlora import __version__
from nightlora.cli.common import AppState
from nightlora.errors import NightloraError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config", "-c", "config_path", type=click.Path(path_type=Path, readable=False),  # a folder, a FIFO, no read permission: load_config says so (exit 3)
    envvar="NIGHTLORA_CONFIG", help="TOML config file (default: $NIGHTLORA_CONFIG or the user config file).",
)
@click.option("--debug", is_flag=True, envvar="NIGHTLORA_DEBUG", help="Show tracebacks.")
@click.version_option(__version__, prog_name="nightlora")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool) -> None:
    """Teach a local assistant from its user's feedback, every night, without breaking it."""
    ctx.obj = AppState(config_path=config_path, debug=debug)


def _register() -> None:
    from nightlora.cli import data_cmds

    for cmd in data_cmds.COMMANDS:
        cli.add_command(cmd)
    # Later stages register here the same way (train, run, deploy...).
    for modname in ("train_cmds", "deploy_cmds", "run_cmds", "report_cmds", "demo_cmds", "distill_cmds", "doctor_cmds"):
        try:
            mod = __import__(f"nightlora.cli.{modname}", fromlist=["COMMANDS"])
        except ModuleNotFoundError as e:
            if e.name != f"nightlora.cli.{modname}":
                raise
            continue
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def _env_flag(value: str | None) -> bool:
    """An on/off environment variable as click reads a flag's envvar: "0", "false", "no", "off" and "" are off."""
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off", "n", "f")


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or _env_flag(os.environ.get("NIGHTLORA_DEBUG"))
    # Everything nightlora writes holds the user's conversations: owner-only whatever the caller's
    # umask (fsutil sets explicit modes too, for what is written in process by other callers).
    umask = os.umask(0o077)
    try:
        return _main(argv, debug)
    finally:
        os.umask(umask)  # for callers in process (tests); the command's own process ends here


def _main(argv: list[str] | None, debug: bool) -> int:
    try:
        cli.main(args=argv, prog_name="nightlora", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("nightlora: interrupted", err=True)
        return 130
    except NightloraError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"nightlora: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("nightlora: interrupted", err=True)
        return 130
    except Exception as e:  # a bug: say so in one line, the traceback with --debug
        if debug:
            traceback.print_exc()
        else:
            click.echo(f"nightlora: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
        return 1


def entry() -> None:
    sys.exit(main())
