"""`hashmesh matcher`: run a stand-alone matcher replica that follows a node
(hashmesh/node/replica.py says what it does and why)."""

from __future__ import annotations

from pathlib import Path

import click

from hashmesh.node.cli.base import cli, errors


@cli.command()
@click.option(
    "--follow", "follow", required=True, help="The node's API URL, e.g. https://node:7400."
)
@click.option(
    "--token-file",
    required=True,
    type=click.Path(dir_okay=False),
    help="A file holding a node token with the read and replicate scopes.",
)
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="HOST:PORT to serve /v1/match, /v1/match/file, /healthz and /metrics on.",
)
@click.option(
    "--data",
    default="hashmesh-matcher",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The replica's own directory (its rows, index checkpoint and matcher.json).",
)
@click.option(
    "--max-lag",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Answer 503 when more than this many feed changes behind the node.",
)
@click.option(
    "--max-lag-s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.5),
    help="Answer 503 when its answers are more than this many seconds behind the node"
    " (the newest head it has applied was read that long ago).",
)
@click.option(
    "--max-stale",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.5),
    help="Answer 503 when the node has not answered for this many seconds.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default="INFO",
    show_default=True,
)
def matcher(
    follow: str,
    token_file: str,
    listen: str,
    data: str,
    max_lag: int,
    max_stale: float,
    max_lag_s: float,
    log_level: str,
) -> None:
    """Run a matcher replica of a node: it takes the node's snapshot, follows its change
    feed, and answers /v1/match for the node's tokens. SIGTERM stops it cleanly."""
    from hashmesh.node.config import check_url, parse_listen
    from hashmesh.node.replica import Options, read_token, run

    with errors():
        check_url(follow, "--follow")
        parse_listen(listen)
        token = read_token(token_file)
        options = Options(follow, token, listen, Path(data), max_lag, max_stale, max_lag_s)
        run(options, level=log_level)
