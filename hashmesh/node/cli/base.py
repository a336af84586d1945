"""What every `hashmesh` command shares: the group, its context, output and error helpers.

The node commands (main.py) and the platform commands (platform.py) both register on
`cli`; keeping the group here lets each import it without importing the other.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from hashmesh.node.config import Home
from hashmesh.node.errors import NodeError
from hashmesh.protocol.errors import ProtocolError

if TYPE_CHECKING:  # urllib and ssl load with the first command that reaches a node
    from hashmesh.node.cli.backends import Backend

EXIT_NOTHING = 1  # nothing wrong with the input, but nothing was done (as `match`: no match)
EXIT_ERROR = 2


def fail(message: str) -> NoReturn:
    click.echo(f"hashmesh: {message}", err=True)
    sys.exit(EXIT_ERROR)


@contextmanager
def errors() -> Iterator[None]:
    try:
        yield
    except (NodeError, ProtocolError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or 'file'}: {exc.strerror}")


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(human(data))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class Context:
    def __init__(self, home: str | None) -> None:
        self.home_path = home

    @property
    def home(self) -> Home:
        if not self.home_path:
            fail("no node home given (use --home HOME or set HASHMESH_HOME)")
        return Home(self.home_path)

    @contextmanager
    def backend(self) -> Iterator[Backend]:
        from hashmesh.node.cli.backends import open_backend

        with errors(), open_backend(self.home) as backend:
            yield backend


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="HASHMESH_HOME",
    type=click.Path(file_okay=False),
    help="The node's home folder (or HASHMESH_HOME).",
)
@click.version_option(package_name="hashmesh")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """hashmesh: a federated, signed hash-exchange network."""
    ctx.obj = Context(home)
