"""The `lipgraph` command: a click group; one module per command, each thin.

Errors the user can fix print one line on stderr and exit 2 (a traceback only with --debug).
"""

from __future__ import annotations

import sys
import traceback

import click

from lipgraph.errors import LipgraphError, UnsupportedModelError

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2


def _version_text() -> str:
    from lipgraph.analyze import versions

    v = versions()
    rest = ", ".join(f"{k} {val}" for k, val in v.items() if k != "lipgraph")
    return f"lipgraph {v['lipgraph']} ({rest})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show lipgraph's version and those of onnx, numpy, scipy, networkx, click and onnxruntime.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or verdict lines on stderr (any command).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Sound L2 Lipschitz bounds and certified robustness radii for ONNX classifiers."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet


def _register() -> None:
    from lipgraph.cli import bound as _bound
    from lipgraph.cli import rules as _rules

    cli.add_command(_bound.bound)
    cli.add_command(_rules.rules)
    cli.add_command(_rules.rule)
    for modname, attr in (("certify", "certify"), ("train", "train"), ("merge", "merge")):
        try:
            mod = __import__(f"lipgraph.cli.{modname}", fromlist=[attr])
        except ModuleNotFoundError as exc:
            if exc.name != f"lipgraph.cli.{modname}":
                raise
            continue
        cli.add_command(getattr(mod, attr))


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the group and map errors to exit codes without tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="lipgraph", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code or 0)
    except click.exceptions.Abort:
        click.echo("lipgraph: aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as e:
        no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)
        if no_args is not None and isinstance(e, no_args):
            # Bare `lipgraph`: show the help as click does (stderr, exit 2), not squashed into one line.
            click.echo(e.format_message(), err=True)
            return EXIT_ERROR
        msg = e.format_message().replace("\n", " ")
        # point to the help of the command that was given (`lipgraph certify --help`), not the group's
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None and ctx.command_path else "lipgraph"
        click.echo(f"lipgraph: error: {msg} (see `{where} --help`)", err=True)
        return EXIT_ERROR
    except UnsupportedModelError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"lipgraph: error: {e}", err=True)
        return EXIT_ERROR
    except LipgraphError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"lipgraph: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("lipgraph: interrupted", err=True)
        return 130
    except MemoryError:
        click.echo("lipgraph: error: out of memory; the model or data is too large for this machine", err=True)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, exit 2
        if debug:
            traceback.print_exc()
        click.echo(
            f"lipgraph: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(rerun with --debug and report it)",
            err=True,
        )
        return EXIT_ERROR
    return int(rv or 0)


# Subcommands whose process keeps freed memory for reuse (lipgraph.allocator): the analysis alone. certify streams
# data larger than memory, where memory given back between batches matters more than the page faults saved.
KEEPS_FREED_MEMORY = ("bound",)


def _subcommand(args: list[str]) -> str | None:
    return next((a for a in args if not a.startswith("-")), None)


def run() -> None:
    """The ``lipgraph`` command's process: the allocator setting of :mod:`lipgraph.allocator` for
    :data:`KEEPS_FREED_MEMORY`, then :func:`main`."""
    if _subcommand(sys.argv[1:]) in KEEPS_FREED_MEMORY:
        from lipgraph.allocator import keep_freed_memory

        keep_freed_memory()
    sys.exit(main())
