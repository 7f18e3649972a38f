"""Command line: one small module per command. Each parses, calls a workflow, and user errors
become one line on stderr and exit status 2 (no stack trace)."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import RunInterrupted, UserError
from ..signals import exit_status, sigterm_as_ctrl_c, signal_name
from .._version import __version__
from . import (data, download, evaluate, export, finetune, info, lr_find, models, predict, recipes, report, serve, train,
               tune)

COMMANDS = (models, recipes, train, lr_find, evaluate, report, info, data, download, finetune, predict, export, serve,
            tune)


class HelpWithDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default, unless it has none worth showing (None, off, empty) or the help
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if not shown or "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with the command line's rule for user errors: one line on stderr, exit status 2 (argparse's own
    prints the whole usage first), and help that shows defaults. Subcommand parsers are of this class too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="resnetlab", description="ResNets from scratch: build, train, "
                                "evaluate, fine-tune, serve.")
    p.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Options and key=value overrides in any order (`--out X train.epochs=1 --no-progress` works)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = list(args.overrides) + extra
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on the command line is one line, like an error: what happened, no source location."""
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings(), sigterm_as_ctrl_c():
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `resnetlab models | head`
        sys.stderr = open(os.devnull, "w")
        return 0
    except RunInterrupted as e:  # what was saved, and the command that continues the run
        print(e, file=sys.stderr)
        return exit_status()
    except OSError as e:  # disk full, permission denied, read-only file system…: the user's environment
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted ({signal_name()})", file=sys.stderr)
        return exit_status()
    finally:
        if "torch.distributed" in sys.modules:  # leave a torchrun job's process group, on success and error alike
            from ..runtime import shutdown_distributed
            shutdown_distributed()
    return 0
