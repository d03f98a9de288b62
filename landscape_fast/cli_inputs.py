"""Turn the command line's ``--model``, ``--data``, ``--loss`` and ``--out`` into objects.

Every resolver raises :class:`CLIInputError` on bad input: one readable line (``message``)
plus a ``hint`` on what to do, which the CLI prints as ``landscape-fast: error: ...`` and
``hint: ...`` (no traceback).

- :func:`resolve_model`: a zoo name (:data:`landscape_fast.zoo.MODELS`) or
  ``module:callable`` (also ``path/to/file.py:callable``), called with no arguments;
  optionally loads a ``state_dict`` checkpoint strictly;
- :func:`resolve_data`: a zoo data name (:data:`landscape_fast.zoo.DATASETS`), a ``.pt``
  file (``(X, y)``, ``{"X", "y"}`` or ``{"inputs", "targets"}``) or a ``.npz`` file
  (arrays ``X`` and ``y``);
- :func:`resolve_loss`: ``"ce"``, ``"mse"``, ``"lm"`` or ``module:callable``;
- :func:`check_fits`: the model runs on two samples and the loss on its outputs;
- :func:`check_writable`: the output directory exists (created) and takes files.

Example:
    >>> import torch
    >>> model = resolve_model("digits_mlp", device="cpu")
    >>> X, y = resolve_data("digits", n=16)
    >>> check_fits(model, resolve_loss("ce"), (X, y))
    >>> try:
    ...     resolve_model("no_such_model", device="cpu")
    ... except CLIInputError as err:
    ...     print(err.message)
    unknown model 'no_such_model'
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape_fast import zoo

__all__ = [
    "CLIInputError",
    "LOSSES",
    "check_fits",
    "check_writable",
    "resolve_data",
    "resolve_loss",
    "resolve_model",
]

LOSSES = ("ce", "mse", "lm")
"""The built-in ``--loss`` names: cross-entropy, mean squared error, next-token LM loss."""


class CLIInputError(Exception):
    """Bad command-line input: ``message`` (one line) and a ``hint`` on how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = _one_line(message)
        self.hint = _one_line(hint)

    def __str__(self) -> str:
        return self.message


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(err: BaseException) -> str:
    """``Type: first line of the message``."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _names(d: dict[str, Any]) -> str:
    return ", ".join(sorted(d))


def _shorten(items: list[str], limit: int = 4) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ---------------------------------------------------------------------------------------------
# module:callable
# ---------------------------------------------------------------------------------------------


def _import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable named by ``module:attr`` (or ``file.py:attr``; ``attr`` may be dotted)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CLIInputError(
            f"{what} spec {spec!r} is not of the form module:callable",
            "write e.g. mypackage.models:make_model (importable) or ./net.py:make_model",
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CLIInputError(
                    f"{what} file {module_name!r} does not exist",
                    "check the path (relative to the current directory)",
                )
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            if mod_spec is None or mod_spec.loader is None:  # pragma: no cover - defensive
                raise CLIInputError(f"cannot load {module_name!r} as a module", "")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # the console script runs without the cwd
            module = importlib.import_module(module_name)
    except CLIInputError:
        raise
    except ModuleNotFoundError as err:
        raise CLIInputError(
            f"cannot import module {module_name!r} for the {what}: {_describe(err)}",
            "run from the directory that holds the module, or add it to PYTHONPATH",
        ) from err
    except Exception as err:
        raise CLIInputError(
            f"importing {module_name!r} for the {what} failed: {_describe(err)}",
            "fix the module so that it imports; rerun with --debug for the traceback",
        ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_")]
            raise CLIInputError(
                f"module {module_name!r} has no attribute {attr!r}",
                f"it defines: {_shorten(public, 8)}" if public else "the module is empty",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIInputError(
            f"{spec!r} is a {type(obj).__name__}, not a callable",
            f"point the {what} spec at a function or class",
        )
    return obj


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise CLIInputError(
            f"invalid device {device!r}: {_describe(err)}", "use cpu or cuda"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIInputError(
            "--device cuda: CUDA is not available here",
            "use --device cpu (python -m landscape_fast info lists the devices)",
        )
    return dev


def _torch_load(path: Path, what: str, hint: str) -> Any:
    """``torch.load`` of tensors only (no pickled code), errors as one readable line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CLIInputError(f"cannot read {what} {str(path)!r}: {_describe(err)}", hint) from err


def _load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CLIInputError(
            f"checkpoint {str(path)!r} does not exist", "check the --checkpoint path"
        )
    obj = _torch_load(path, "checkpoint", "save it with torch.save(model.state_dict(), path)")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CLIInputError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict",
            'save model.state_dict() (or a dict with a "state_dict" or "model" entry)',
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict(strict=True)`` with a one-line report of what does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_shorten(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_shorten(shapes, 2)}")
    if problems:
        raise CLIInputError(
            f"checkpoint {str(path)!r} does not match the model: " + "; ".join(problems),
            "save the checkpoint from the same model (same constructor arguments) as --model",
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as err:  # e.g. a dtype that cannot be copied
        raise CLIInputError(
            f"cannot load checkpoint {str(path)!r}: {_describe(err)}",
            "save the checkpoint from the same model as --model",
        ) from err


def resolve_model(
    spec: str,
    *,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> nn.Module:
    """The model named by ``spec``, with ``checkpoint`` loaded, on ``device`` in ``dtype``.

    Args:
        spec: A name of :data:`landscape_fast.zoo.MODELS` (built with ``seed``) or
            ``module:callable`` / ``file.py:callable``, called with no arguments.
        checkpoint: A ``torch.save`` file of a ``state_dict``, or of a dict holding one under
            ``"state_dict"`` or ``"model"``; loaded with ``strict=True``.
        dtype: Floating-point parameters and buffers are cast to it (``None``: unchanged).

    Raises:
        CLIInputError: Unknown name, import failure, a callable that fails or returns no
            ``nn.Module``, an unreadable or mismatching checkpoint, an unavailable device.
    """
    dev = _device(device)
    if ":" not in spec:
        if spec not in zoo.MODELS:
            raise CLIInputError(
                f"unknown model {spec!r}",
                f"use a zoo model ({_names(zoo.MODELS)}) or module:callable",
            )
        model = zoo.MODELS[spec](seed=seed)
    else:
        factory = _import_callable(spec, "model")
        try:
            model = factory()
        except Exception as err:
            raise CLIInputError(
                f"calling {spec}() failed: {_describe(err)}",
                "the model callable must build the model with no arguments",
            ) from err
        if not isinstance(model, nn.Module):
            raise CLIInputError(
                f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module",
                "the model callable must return the model (an nn.Module instance)",
            )
    if checkpoint is not None:
        _load_state(model, _load_checkpoint(checkpoint), checkpoint)
    try:
        model = model.to(device=dev) if dtype is None else model.to(device=dev, dtype=dtype)
    except Exception as err:
        raise CLIInputError(
            f"cannot move the model to {dev} ({dtype}): {_describe(err)}", "try --device cpu"
        ) from err
    return model


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _pair_from(obj: Any, path: Path) -> tuple[Any, Any]:
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    if isinstance(obj, dict):
        for a, b in (("X", "y"), ("inputs", "targets")):
            if a in obj and b in obj:
                return obj[a], obj[b]
        keys = _shorten([repr(k) for k in obj], 6)
        raise CLIInputError(
            f"data file {str(path)!r} holds a dict with keys {keys or '(none)'}, "
            "not X and y (or inputs and targets)",
            'save (X, y) or {"X": X, "y": y} with torch.save',
        )
    raise CLIInputError(
        f"data file {str(path)!r} holds a {type(obj).__name__}, not a pair (X, y)",
        'save (X, y) or {"X": X, "y": y} with torch.save',
    )


def _load_data_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        hint = 'save tensors (X, y) or {"X": X, "y": y} with torch.save'
        X, y = _pair_from(_torch_load(path, "data file", hint), path)
    elif suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as arrays:
                obj = {k: arrays[k] for k in arrays.files}
        except Exception as err:
            raise CLIInputError(
                f"cannot read data file {str(path)!r}: {_describe(err)}",
                "save it with numpy.savez(path, X=X, y=y)",
            ) from err
        try:
            X, y = _pair_from(obj, path)
        except CLIInputError as err:
            raise CLIInputError(err.message, "save it with numpy.savez(path, X=X, y=y)") from None
        X, y = torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(y))
    else:
        raise CLIInputError(
            f"unsupported data file type {suffix or '(no suffix)'!r} for {str(path)!r}",
            "use a .pt file (torch.save((X, y), path)) or an .npz file "
            "(numpy.savez(path, X=X, y=y))",
        )
    for name, t in (("X", X), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise CLIInputError(
                f"{name} in {str(path)!r} is a {type(t).__name__}, not a tensor",
                "store torch tensors in .pt files and numpy arrays in .npz files",
            )
        if t.dim() == 0:
            raise CLIInputError(
                f"{name} in {str(path)!r} is a scalar, not a batch of samples",
                "the first dimension of X and y indexes the samples",
            )
    return X, y


def resolve_data(
    spec: str | Path, *, n: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(X, y)`` named by ``spec``, cut to its first ``n`` samples (CPU tensors).

    Args:
        spec: A name of :data:`landscape_fast.zoo.DATASETS` (the synthetic ones are generated
            with ``n`` samples and ``seed``), or a path to a ``.pt`` file (``(X, y)``,
            ``{"X": X, "y": y}`` or ``{"inputs": X, "targets": y}``) or an ``.npz`` file
            (arrays ``X`` and ``y``).
        n: Use the first ``n`` samples (``None``: all).

    Raises:
        CLIInputError: Unknown name, missing or unreadable file, wrong structure, ``X`` and
            ``y`` of different lengths, ``n`` out of range.
    """
    if n is not None and n < 1:
        raise CLIInputError(f"--samples must be at least 1, got {n}", "pass e.g. --samples 256")
    name = str(spec)
    if name in zoo.DATASETS:
        entry = zoo.DATASETS[name]
        if name == "digits":  # a fixed set
            X, y = entry()
        else:
            X, y = entry(n=n, seed=seed)
    else:
        path = Path(name).expanduser()
        looks_like_path = path.suffix != "" or os.sep in name or "/" in name
        if not path.exists():
            if looks_like_path:
                raise CLIInputError(
                    f"data file {name!r} does not exist",
                    "check the --data path (relative to the current directory)",
                )
            raise CLIInputError(
                f"unknown data set {name!r}",
                f"use a zoo data set ({_names(zoo.DATASETS)}) or a .pt / .npz file",
            )
        if path.is_dir():
            raise CLIInputError(
                f"--data {name!r} is a directory", "pass a .pt or .npz file holding X and y"
            )
        X, y = _load_data_file(path)
    if len(X) != len(y):
        raise CLIInputError(
            f"X and y have different numbers of samples: {len(X)} and {len(y)}",
            "the first dimension of X and y must both index the samples",
        )
    if len(X) == 0:
        raise CLIInputError(f"the data {name!r} is empty", "pass at least one sample")
    if n is not None:
        if n > len(X):
            raise CLIInputError(
                f"--samples {n} exceeds the {len(X)} samples of {name!r}",
                f"pass --samples {len(X)} or fewer, or leave it out to use them all",
            )
        X, y = X[:n], y[:n]
    return X, y


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def resolve_loss(spec: str) -> str | Callable[..., torch.Tensor]:
    """The loss for :func:`landscape_fast.analyze.analyze` named by ``spec``.

    ``"ce"`` and ``"mse"`` stay names (the library knows them, e.g. for the Gauss-Newton
    structure of cross-entropy); ``"lm"`` is :func:`landscape_fast.zoo.lm_loss`;
    ``module:callable`` is imported and must be ``loss(outputs, targets) -> scalar``.
    """
    key = spec.strip()
    if key.lower() in ("ce", "cross_entropy", "mse"):
        return "ce" if key.lower() == "cross_entropy" else key.lower()
    if key.lower() == "lm":
        return zoo.lm_loss
    if ":" not in key:
        raise CLIInputError(
            f"unknown loss {spec!r}",
            f"use one of {', '.join(LOSSES)} or module:callable (loss(outputs, targets))",
        )
    return _import_callable(key, "loss")


def _loss_callable(loss_fn: str | Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    from landscape_fast.operators.model_function import resolve_loss as library_loss

    return library_loss(loss_fn)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_fits(
    model: nn.Module,
    loss_fn: str | Callable[..., torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Run ``model`` on the first two samples (eval mode, no grad) and ``loss_fn`` on its
    outputs; the model's mode and state are left as they were.

    Raises:
        CLIInputError: The model fails on the inputs ("the model does not accept the data"),
            or the loss fails on the outputs or returns no scalar ("the loss does not fit
            the model outputs").
    """
    X, y = data
    was_training = model.training
    model.eval()  # BatchNorm: leave the running statistics alone
    try:
        with torch.no_grad():
            try:
                out = model(X[:2])
            except Exception as err:
                raise CLIInputError(
                    f"the model does not accept the data: {_describe(err)} "
                    f"(inputs of shape {tuple(X.shape[1:])} per sample, dtype "
                    f"{str(X.dtype).removeprefix('torch.')})",
                    "pick data the model was built for (the zoo models fit: "
                    + ", ".join(f"{m} <- {e.data}" for m, e in zoo.MODELS.items())
                    + ")",
                ) from err
            try:
                loss = _loss_callable(loss_fn)(out, y[:2])
            except Exception as err:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise CLIInputError(
                    f"the loss does not fit the model outputs: {_describe(err)} (outputs "
                    f"{shape}, targets {tuple(y[:2].shape)})",
                    "ce needs class logits (B, C) and labels (B,); lm needs (B, T, V) and "
                    "(B, T); mse needs targets shaped like the outputs",
                ) from err
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
                raise CLIInputError(
                    f"the loss does not fit the model outputs: it returned {shape}, not a scalar",
                    "the loss must reduce to the mean over the batch",
                )
    finally:
        model.train(was_training)


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and check that files can be written into it.

    Raises:
        CLIInputError: It is a file, lies under a file, or is not writable.
    """
    path = Path(out_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".landscape-fast-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _describe(err)
        raise CLIInputError(
            f"cannot write the report to {str(path)!r}: {reason}",
            "pass a writable directory with --out",
        ) from err
    return path
