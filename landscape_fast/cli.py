"""The ``landscape-fast`` command line (also ``python -m landscape_fast``).

Example:
    $ landscape-fast demo          # train the digits MLP and print the report
    $ landscape-fast info          # backends, devices, versions
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="landscape-fast", description="Loss-landscape geometry of PyTorch models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the built-in digits MLP and print its report")
    demo.add_argument("--seconds", type=float, default=3.0, help="training time (default 3)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="backends, devices and versions")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 error, 2 usage)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from landscape_fast.demo import run_demo

            run_demo(seconds=args.seconds, seed=args.seed)
        elif args.command == "info":
            from landscape_fast.info import main as info_main

            info_main()
    except Exception as err:  # one readable line unless --debug
        if args.debug:
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"landscape-fast: error: {type(err).__name__}: {first}", file=sys.stderr)
        print("hint: rerun with --debug for the traceback", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
