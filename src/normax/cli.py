"""The ``normax`` command: ``normax bench | demo | tune | info``.

Each subcommand lives in its own module and is imported only when run, so ``normax bench`` does
not pay for the tuning stack and ``normax tune`` does not pay for the benchmark harness.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, help); each module defines add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "bench": ("normax.bench", "benchmark every kernel against NumPy and PyTorch CPU"),
    "demo": ("normax.nn.demo", "train a batch-normalized MLP on the handwritten digits"),
    "tune": ("normax.tune.cli", "tune the demo network with random, coarse-to-fine search"),
    "info": ("normax._config", "show the version, backend, SIMD, OpenMP runtime and threads"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("normax")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from normax import __version__

        return __version__


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the arguments of the chosen subcommand only (others are not imported)."""
    parser = argparse.ArgumentParser(
        prog="normax",
        description="Fast NumPy-native deep-learning kernels: benchmark, demo, tuning, build info.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{bench,demo,tune,info}")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _parser=p)
        if name == chosen:
            try:
                importlib.import_module(module).add_arguments(p)
            except ImportError as exc:
                p.set_defaults(_import_error=exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = build_parser(argv).parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top-level one
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    err = getattr(args, "_import_error", None)
    if err is not None:
        print(f"normax {args.command}: unavailable ({err})", file=sys.stderr)
        return 2
    try:
        status = int(importlib.import_module(args._module).run(args) or 0)
        sys.stdout.flush()  # a reader that left shows here, inside the handlers below
        return status
    except KeyboardInterrupt:  # Ctrl-C: a subcommand that keeps partial results says so itself
        print(f"\nnormax {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `normax bench | head`: the reader left, which is not a failure
        # Python would report the pipe again while flushing stdout at exit; point it at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
