"""The ``enpheeph-onnx`` click group: one-line errors and exit codes for every command."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .. import __version__
from ..errors import EnpheephError, GateFailedError

log = logging.getLogger("enpheeph_onnx")


class _Group(click.Group):
    """Turns :class:`EnpheephError` and click's usage errors into a one-line message and
    exit code 2 (click would print the usage block and a hint over three lines)."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # no command: the help
            click.echo(e.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as e:  # bad option, missing argument, bad value
            where = e.ctx.command_path if e.ctx is not None else "enpheeph-onnx"
            text = e.format_message()
            if isinstance(e, click.NoSuchOption) and e.option_name in ("-v", "-vv",
                                                                       "--verbose"):
                text += " (-v goes before the command: enpheeph-onnx -v COMMAND ...)"
            click.echo(f"Error: {text} (see '{where} --help')", err=True)
            sys.exit(2)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EnpheephError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except GateFailedError as e:
            click.echo(f"FAILED {e}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="enpheeph-onnx")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Fault injection for deep neural networks on ONNX graphs.

    Declare faults (bit flip, stuck-at-0/1, value) on weights, activations or inputs,
    get a faulty model that runs in stock onnxruntime, and run fault-injection campaigns.

    Every command prints results on stdout (--json for machine-readable output), logs and
    a final PASSED/FAILED line on stderr, and exits 0 (success), 1 (a check failed) or 2
    (usage or input error: one line, no output file). -o/--output is always the file (or
    folder) a command writes, --data the .npz of model inputs.
    """
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
