"""What every `mqlab` command shares: the help layout, the consoles, the server options, the
error exit, and how a command that starts no server finds them. mqlab.faces.cli and its sub-apps
(mqlab.faces.dead_cli) import it, so that none of them imports another."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from mqlab.lab.services.manager import ServicesError
from mqlab.settings import Settings

#: Help in click's plain layout, readable at 80 columns: typer's rich panels give each
#: option five columns (names, negations, type) and squeeze its description to ~20 cells.
#: `-h` as well as `--help`, for every command. Defaults and variables are said one way, click's
#: ("[env var: X; default: Y]"): by show_default where the default is not a plain value, and
#: written the same way by hand where the code reads a variable itself (env_default).
HELP = {"rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}


def env_default(variable: str, default: object) -> str:
    """The end of an option's help, for a variable the code reads itself: as click writes it
    (two spaces after the help's own words)."""
    return f"  [env var: {variable}; default: {default}]"


console = Console()
err = Console(stderr=True)

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="REDIS_URL",
        metavar="URL",
        help="The Redis (or Valkey) server to use.",
        show_default="the embedded Valkey",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="DATABASE_URL",
        metavar="URL",
        help="The PostgreSQL server to use.",
        show_default="the embedded PostgreSQL",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error the person can act on and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def resolve(redis_url: str | None, database_url: str | None) -> Settings:
    """The servers of a command that does not start any (mqlab.lab.environment.find); a clear
    error when one is missing."""
    from mqlab.lab.environment import find
    from mqlab.system.redis_clients import check_url

    try:
        settings = find(redis_url, database_url)
        # A malformed Redis URL is refused here, before the command starts anything.
        check_url(settings.redis_url)
    except ServicesError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(f"the Redis URL (REDIS_URL / --redis-url): {exc}") from None
    return settings
