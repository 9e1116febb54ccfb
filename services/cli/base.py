"""What every command shares: the app, the consoles, and one way to end with an error.

Every error a user can meet ends the command with one line that says what to do, and a non-zero
exit; the traceback only with ``--debug`` (or ``AGENTSTREAM_DEBUG=1``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from services.common.errors import AgentstreamError

console = Console()
err = Console(stderr=True)


class CliError(AgentstreamError):
    """A command cannot go on; the message is the one line the user reads (with the fix)."""

    retriable = False

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Cli(typer.Typer):
    """Typer, with the last word on errors: one line each, the traceback behind ``--debug``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as exc:
            if debugging():
                raise
            print_error(_one_line(exc))
            sys.exit(exc.exit_code if isinstance(exc, CliError) else 1)


def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, AgentstreamError):
        return str(exc)
    if isinstance(exc, ValidationError):  # settings from the environment: say which one
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
    return f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback, and report it)"


def debugging() -> bool:
    return os.environ.get("AGENTSTREAM_DEBUG", "") not in ("", "0", "false")


def print_error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)  # one line, whatever the width


def fail(message: str, *, exit_code: int = 1) -> NoReturn:
    raise CliError(message, exit_code=exit_code)


def prog() -> str:
    """How to start us again, for the commands a hint names: ``.venv/bin/agentstream`` from the clone,
    ``agentstream`` when that is what PATH finds."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is None or script.name != "agentstream":
        return "agentstream"
    found = shutil.which("agentstream")
    if found is not None and Path(found).resolve() == script:
        return "agentstream"
    try:
        return str(script.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(script)


app = Cli(help="agentstream: LLM agents as event-driven services on Apache Kafka.", no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.", envvar="AGENTSTREAM_DEBUG")] = False,
) -> None:
    if debug:
        os.environ["AGENTSTREAM_DEBUG"] = "1"


def group(name: str, help: str) -> typer.Typer:
    sub = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


Url = Annotated[str, typer.Option(envvar="AGENTSTREAM_URL", help="Orchestrator base URL.")]
ApiKey = Annotated[str, typer.Option(envvar="AGENTSTREAM_API_KEY", help="API key of the tenant.")]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_KEY = "dev-key"
