"""What the tests of the `aegaeon` command share."""

from click.testing import CliRunner, Result

from aegaeon.cli import main


def invoke(*args: str) -> Result:
    """`aegaeon ARGS...`, with an exception raised in the test rather than turned into exit code 1."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)
