"""The ``landscape-fast`` command line (also ``python -m landscape_fast``).

Example:
    $ landscape-fast demo          # train the digits MLP, analyze it, write an HTML report
    $ landscape-fast analyze --model cnn --data cifar_like --samples 256 --out report
    $ landscape-fast analyze --model mypkg.nets:make_net --checkpoint net.pt \\
          --data train.pt --loss ce --lr 0.05 --batch-size 128 --budget-seconds 120
    $ landscape-fast info          # backends, devices, versions

``analyze`` writes ``report.html``, ``plots/*.png`` and, last, ``report.json`` into ``--out``
and prints the report's summary (with ``--json``: the JSON, and nothing else, on stdout).

Exit codes: 0 a complete report; 3 a report was written but something was skipped (e.g. the
budget ran out); 1 an error (one line ``landscape-fast: error: ...`` and a ``hint:`` on
stderr; the traceback with ``--debug``); 2 a usage error; 130 interrupted (no
``report.json`` is left behind: it is written last, and every file atomically).

    >>> build_parser().parse_args(["analyze", "--model", "cnn", "--data", "cifar_like"]).out
    'landscape_report'
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    from landscape_fast.zoo import DATASETS, MODELS

    parser = argparse.ArgumentParser(
        prog="landscape-fast", description="Loss-landscape geometry of PyTorch models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # --debug is accepted after the subcommand too (SUPPRESS: it does not reset the flag)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="train the built-in digits MLP, analyze it and write an HTML report",
    )
    demo.add_argument("--seconds", type=float, default=3.0, help="training time (default 3)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="landscape_report", help="report directory")
    demo.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    an = sub.add_parser(
        "analyze",
        parents=[common],
        help="analyze a model's loss landscape and write a report",
        description="Compute the loss-landscape geometry of a model on a data set and write "
        "report.html, plots/*.png and report.json. Exit codes: 0 complete, 3 written but "
        "incomplete, 1 error, 2 usage error, 130 interrupted.",
    )
    an.add_argument(
        "--model",
        required=True,
        metavar="NAME|module:callable",
        help=f"a zoo model ({', '.join(MODELS)}) or module:callable returning an nn.Module",
    )
    an.add_argument(
        "--data",
        required=True,
        metavar="NAME|PATH",
        help=f"a zoo data set ({', '.join(DATASETS)}), a .pt file ((X, y) or "
        '{"X": .., "y": ..}) or an .npz file (arrays X, y)',
    )
    an.add_argument(
        "--loss",
        metavar="ce|mse|lm|module:callable",
        help="the loss (default: the zoo data's or model's own, e.g. lm for tokens)",
    )
    an.add_argument("--checkpoint", metavar="FILE.pt", help="a state_dict to load (strict)")
    an.add_argument(
        "--init-checkpoint",
        metavar="FILE.pt",
        help="the state_dict at initialization (for the pac_bayes quantity)",
    )
    an.add_argument(
        "--quantities",
        default="default",
        metavar="q1,q2,...|default",
        help="comma-separated quantities (default: the library's default set)",
    )
    an.add_argument("--lr", type=_positive_float, help="training learning rate")
    an.add_argument("--batch-size", type=_positive_int, help="training batch size")
    an.add_argument("--budget-seconds", type=_positive_float, metavar="S")
    an.add_argument("--budget-matvecs", type=_positive_int, metavar="M")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--samples", type=_positive_int, metavar="N", help="use the first N samples")
    an.add_argument("--out", default="landscape_report", help="report directory")
    an.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    an.add_argument("--dtype", choices=["float32", "float64"], help="cast model and data to it")
    an.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    an.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    an.add_argument("--no-html", action="store_true", help="write report.json only")

    sub.add_parser("info", parents=[common], help="backends, devices and versions")
    return parser


# ---------------------------------------------------------------------------------------------
# Pieces shared by analyze and demo
# ---------------------------------------------------------------------------------------------


def analyze_module() -> Any:
    """The :mod:`landscape_fast.analyze` module (looked up at call time, so tests can patch
    its ``analyze``; ``importlib`` because the package may re-export the function under the
    same name)."""
    return importlib.import_module("landscape_fast.analyze")


def parse_quantities(text: str) -> str | list[str]:
    """``"default"`` or the validated list of comma-separated quantity names."""
    from landscape_fast.cli_inputs import CLIInputError

    names = [q.strip() for q in text.split(",") if q.strip()]
    if not names:
        raise CLIInputError("--quantities is empty", "pass default or e.g. eigenvalues_top,trace")
    if names == ["default"]:
        return "default"
    known = tuple(getattr(analyze_module(), "QUANTITIES", ()))
    unknown = [q for q in names if known and q not in known]
    if unknown:
        raise CLIInputError(
            f"unknown quantit{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}",
            f"choose from {', '.join(known)} (or default)",
        )
    return list(dict.fromkeys(names))


def progress_printer(quiet: bool) -> Callable[[str], None] | None:
    """``None`` when quiet, else a callable printing each line on stderr (flushed)."""
    if quiet:
        return None

    def show(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return show


def write_report(report: Any, out: Path, *, html: bool = True) -> tuple[Path, list[Path]]:
    """Write ``report.html`` and ``plots/*.png`` (unless ``html`` is false) and then
    ``report.json`` into ``out``; returns the JSON path and the other files written.

    A ``report.json`` from an earlier run is removed first, so that after an interrupt no
    ``report.json`` sits next to a newer HTML page: it exists only for a finished run.
    """
    json_path = out / "report.json"
    json_path.unlink(missing_ok=True)
    written: list[Path] = []
    if html:
        report.to_html(out / "report.html")
        written.append(out / "report.html")
        try:
            written += list(report.save_plots(out / "plots"))
        except ImportError:  # no matplotlib: the HTML page says so
            pass
    report.to_json(json_path)
    return json_path, written


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """With ``--json``, stray prints of the analysis go to stderr: stdout carries JSON only."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> int:
    """``landscape-fast analyze``: resolve, check, analyze, write; the exit code."""
    import torch

    from landscape_fast import zoo
    from landscape_fast.cli_inputs import (
        CLIInputError,
        check_fits,
        check_writable,
        resolve_data,
        resolve_loss,
        resolve_model,
    )

    out = check_writable(args.out)
    quantities = parse_quantities(args.quantities)
    if quantities != "default":
        if "stability" in quantities and args.lr is None:
            raise CLIInputError(
                "the stability quantity needs the training learning rate", "pass --lr"
            )
        if "pac_bayes" in quantities and args.init_checkpoint is None:
            raise CLIInputError(
                "the pac_bayes quantity needs the parameters at initialization",
                "pass --init-checkpoint FILE.pt (the state_dict before training)",
            )
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = resolve_model(
        args.model, checkpoint=args.checkpoint, device=args.device, dtype=dtype, seed=args.seed
    )
    X, y = resolve_data(args.data, n=args.samples, seed=args.seed)
    if args.loss is not None:
        loss_fn = resolve_loss(args.loss)
    else:
        entry = zoo.DATASETS.get(args.data) or zoo.MODELS.get(args.model)
        if entry is None:
            raise CLIInputError(
                "--loss is needed when neither --model nor --data is from the zoo",
                "pass --loss ce (classification), mse (regression), lm (next-token) or "
                "module:callable",
            )
        loss_fn = resolve_loss(entry.default_loss)
    device = next((p.device for p in model.parameters()), torch.device(args.device))
    X, y = (
        t.to(device=device, dtype=dtype)
        if (dtype is not None and t.is_floating_point())
        else t.to(device=device)
        for t in (X, y)
    )
    check_fits(model, loss_fn, (X, y))

    init_params = None
    if args.init_checkpoint is not None:
        init_params = resolve_model(
            args.model, checkpoint=args.init_checkpoint, device=device, dtype=dtype, seed=args.seed
        ).state_dict()

    budget = None
    if args.budget_seconds is not None or args.budget_matvecs is not None:
        budget = {"seconds": args.budget_seconds, "matvecs": args.budget_matvecs}
    with _stdout_to_stderr(args.json):
        report = analyze_module().analyze(
            model,
            loss_fn,
            (X, y),
            quantities=quantities,
            lr=args.lr,
            batch_size=args.batch_size,
            budget=budget,
            seed=args.seed,
            init_params=init_params,
            progress=progress_printer(args.quiet),
            name=args.model,
        )
        json_path, written = write_report(report, out, html=not args.no_html)
    return finish(report, json_path, written, as_json=args.json, quiet=args.quiet)


def finish(
    report: Any, json_path: Path, written: Sequence[Path], *, as_json: bool, quiet: bool
) -> int:
    """Print the summary (or the JSON) and where the files went; the exit code (0 or 3)."""
    if as_json:
        sys.stdout.write(json_path.read_text(encoding="utf-8").rstrip("\n") + "\n")
    else:
        print(report.summary())
    if not quiet:
        names = [p.name for p in written if p.parent == json_path.parent] + [json_path.name]
        pngs = sum(1 for p in written if p.suffix == ".png")
        extra = f" and {pngs} plot{'s' * (pngs != 1)} in plots/" if pngs else ""
        print(
            f"landscape-fast: wrote {', '.join(names)}{extra} to {json_path.parent}",
            file=sys.stderr,
        )
    if not report.complete:
        if not quiet:
            print(
                "landscape-fast: the report is incomplete (see its skipped quantities)",
                file=sys.stderr,
            )
        return EXIT_INCOMPLETE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 error, 2 usage, 3 incomplete
    report, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from landscape_fast.demo import run_demo

            return run_demo(seconds=args.seconds, seed=args.seed, out=args.out, quiet=args.quiet)
        if args.command == "analyze":
            return cmd_analyze(args)
        if args.command == "info":
            from landscape_fast.info import main as info_main

            info_main()
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("landscape-fast: interrupted; no report.json was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # one readable line unless --debug
        if args.debug:
            raise
        from landscape_fast.cli_inputs import CLIInputError

        if isinstance(err, CLIInputError):
            message, hint = err.message, err.hint or "see landscape-fast analyze --help"
        else:
            first = (str(err).strip().splitlines() or [""])[0]
            message = f"{type(err).__name__}: {first}" if first else type(err).__name__
            hint = "rerun with --debug for the traceback"
        print(f"landscape-fast: error: {message}", file=sys.stderr)
        print(f"hint: {hint}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
