"""What every `hashmesh` command shares: the group, its context, output and error helpers.

The node commands (main.py) and the platform commands (platform.py) both register on
`cli`; keeping the group here lets each import it without importing the other.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from hashmesh.node.config import Home
from hashmesh.node.errors import (
    EXIT_CALLER,
    EXIT_INTERNAL,
    HashmeshError,
    InternalError,
    NodeError,
    fault_of,
)

if TYPE_CHECKING:  # urllib and ssl load with the first command that reaches a node
    from hashmesh.node.cli.backends import Backend

EXIT_NOTHING = 1  # nothing wrong with the input, but nothing was done (as `match`: no match)
EXIT_ERROR = EXIT_CALLER
TRACEBACK_ENV = "HASHMESH_TRACEBACK"  # set to 1: an internal error also prints its traceback


def read_small_file(path: str, limit: int, what: str = "FILE") -> bytes:
    """A statement or document file an operator names, stripped: read no more than `limit`
    bytes plus one, so a huge or endless file is refused before it is held."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise NodeError(f"{what}: {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise NodeError(f"{what}: {path} is larger than {limit} bytes")
    return data.strip()


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"hashmesh: {message}", err=True)
    sys.exit(code)


def internal(exc: BaseException) -> NoReturn:
    """A bug of ours: one sentence that says so, never blaming the input; the traceback
    only on request, since most readers of stderr are scripts and operators."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    if not isinstance(exc, InternalError):  # a stray exception: its class says most
        text = f"{type(exc).__name__}{': ' + text if text else ''}"
    fail(
        f"internal error: {text} (a bug in"
        f" hashmesh, not in your input; nothing more was done; {TRACEBACK_ENV}=1 shows"
        " where)",
        EXIT_INTERNAL,
    )


@contextmanager
def errors() -> Iterator[None]:
    """Every failure as one sentence on stderr with the exit code of its fault
    (hashmesh/node/errors.py FAULTS); a file the command was given that cannot be read is
    the caller's. Click's own exits and usage errors pass through."""
    try:
        yield
    except (click.ClickException, click.Abort):
        raise
    except OSError as exc:
        fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")
    except Exception as exc:
        fault = fault_of(exc)
        if fault.family == "internal" or not isinstance(exc, HashmeshError):
            internal(exc)
        fail(str(exc), fault.exit_code)


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

    def show(
        self, call: Callable[[Backend], Any], as_json: bool, human: Callable[[Any], str]
    ) -> None:
        """Make one call on the node (directly or through its API) and print its answer:
        the whole of most commands, so their errors and output cannot drift apart."""
        with self.backend() as backend:
            result = call(backend)
        emit(result, as_json, human)


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
