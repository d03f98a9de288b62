r"""Hessian-vector-product engines: one batch, a whole block of vectors at once.

Each engine computes, for one data batch :math:`b` with mean loss :math:`L_b` and a block
:math:`V \in \mathbb{R}^{k\times p}`, the rows :math:`\nabla^2 L_b(\theta)\, v_j`:

``reverse``
    Reverse-over-reverse (double backward), the reference: one forward and one
    ``create_graph`` gradient per batch, shared by the block, then one second backward per
    vector, :math:`H v = \nabla_\theta (\nabla_\theta L \cdot v)`.
``cached``
    The same graph, kept alive across products while the memory budget allows (a planner
    measures one batch's graph), and the whole block pushed through it in one batched
    second backward (``is_grads_batched``) — a product then costs only the second
    backward. Batches that do not fit are rebuilt on every product.
``forward``
    Forward-over-reverse with ``torch.func``: :math:`Hv = \partial_\epsilon \nabla L(\theta +
    \epsilon v)`, the k tangents propagated together by ``vmap``, chunked to the budget.
``finite_difference``
    Central differences of gradients,
    :math:`Hv \approx (\nabla L(\theta + hv) - \nabla L(\theta - hv)) / 2h` with
    :math:`h = \epsilon_{\text{dtype}}^{1/3} \max(1, \|\theta\|_\infty) / \|v\|_2`:
    needs only first derivatives (fused attention kernels, custom ops without double
    backward). Error :math:`O(h^2 \|\nabla^3 L\|) + O(\epsilon / h)`, about
    :math:`\epsilon^{2/3}` relative (3e-11 in float64, 4e-5 in float32).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from landscape_fast.params import ParamSpace
    >>> from landscape_fast.operators.model_function import ModelFunction
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    >>> f = ModelFunction(model, "mse", ParamSpace(model))
    >>> batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))
    >>> V = torch.randn(2, 21, dtype=torch.float64)
    >>> views = f.space.views(V)
    >>> a = f.space.flatten(ReverseEngine().batch_products(f, 0, batch, views))
    >>> b = f.space.flatten(ForwardEngine().batch_products(f, 0, batch, views))
    >>> bool(torch.allclose(a, b, rtol=1e-10, atol=1e-12))
    True
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import autograd

from landscape_fast.data import Batch, slice_batch, to_device
from landscape_fast.operators.memory import saved_bytes
from landscape_fast.operators.model_function import ModelFunction
from landscape_fast.operators.semantics import ModelFingerprint

ENGINES = ("auto", "reverse", "cached", "forward", "finite_difference")

Grads = list[torch.Tensor | None]
RngFactory = Callable[[], contextlib.AbstractContextManager[Any]]


def check_engine(name: str) -> str:
    """Validate an ``hvp=`` choice."""
    if name not in ENGINES:
        raise ValueError(
            f"hvp must be one of {ENGINES}, got {name!r}. 'auto' picks the fastest engine that "
            "works for the model; 'finite_difference' needs only first derivatives"
        )
    return name


def checked_loss(
    f: ModelFunction,
    theta: Sequence[torch.Tensor],
    batch: Batch,
    index: int,
    fused: bool = False,
) -> torch.Tensor:
    """``f.loss`` with a clear error for a non-finite value (naming the batch)."""
    loss = f.loss(theta, batch, fused)
    check_finite_loss(loss, index)
    return loss


def check_finite_loss(loss: torch.Tensor, index: int) -> None:
    """Raise ``FloatingPointError`` naming batch ``index`` if ``loss`` is not finite."""
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError(
            f"the loss is {loss.item()} on batch {index}: curvature is undefined there. Check "
            "the inputs of that batch, the model's numerical range (try dtype=torch.float64), "
            "or the loss function"
        )


def block_vjp(
    outputs: Sequence[torch.Tensor | None],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    *,
    batched: bool,
    chunk: int | None = None,
) -> Grads:
    r"""Rows :math:`\nabla_x (\sum_i \text{out}_i \cdot c_{ij})` for each row ``j`` of a block.

    ``cotangents[i]`` is ``(k, *outputs[i].shape)``. Outputs that are ``None`` or constant
    contribute nothing; an input nothing depends on gets ``None`` (zero). ``batched`` pushes
    ``chunk`` rows at once through one backward (``is_grads_batched``); else one per row.
    The graph is retained.
    """
    live = [i for i, g in enumerate(outputs) if g is not None and g.requires_grad]
    if not live:
        return [None] * len(inputs)
    k = cotangents[live[0]].shape[0]
    chunk = k if chunk is None else chunk
    outs = [outputs[i] for i in live]
    pieces: list[Grads] = []
    if batched:
        for start in range(0, k, chunk):
            cot = [cotangents[i][start : start + chunk] for i in live]
            pieces.append(
                list(
                    autograd.grad(
                        outs,
                        inputs,
                        grad_outputs=cot,
                        retain_graph=True,
                        allow_unused=True,
                        is_grads_batched=True,
                    )
                )
            )
    else:
        for j in range(k):
            cot = [cotangents[i][j] for i in live]
            res = autograd.grad(
                outs, inputs, grad_outputs=cot, retain_graph=True, allow_unused=True
            )
            pieces.append([None if r is None else r[None] for r in res])
    return [
        None if pieces[0][i] is None else torch.cat([p[i] for p in pieces], dim=0)
        for i in range(len(inputs))
    ]


def assert_twice_differentiable(tensors: Sequence[torch.Tensor | None], what: str) -> None:
    """Raise if the graph behind ``tensors`` passes through a once-differentiable backward.

    A custom ``autograd.Function`` whose backward is ``@once_differentiable`` returns, under
    ``create_graph=True``, outputs whose graph is cut off (an error node over detached
    copies, ``torch::autograd::Error``): differentiating them again silently drops every
    term through it. One walk over the graph finds those nodes.
    """
    seen: set[int] = set()
    stack = [t.grad_fn for t in tensors if t is not None and t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name() in ("torch::autograd::Error", "torch::autograd::DelayedError"):
            raise RuntimeError(
                f"{what}: the model's backward is not differentiable (a custom "
                "autograd.Function with a once_differentiable backward?); double backward "
                "would silently drop the terms through it. Use hvp='finite_difference'."
            )
        stack.extend(fn for fn, _ in node.next_functions)


class HVPEngine:
    """Base class: ``batch_products`` computes :math:`\\nabla^2 L_b\\, v_j` for a block.

    Attributes:
        name: The engine's name as reported by operators.
        attention: ``"math"`` if the engine needs differentiable attention kernels.
    """

    name = "base"
    attention = "math"

    def begin_pass(self, f: ModelFunction) -> None:  # noqa: B027 - optional hook
        """Called before each pass over the data."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget cached state."""

    def batch_products(
        self,
        f: ModelFunction,
        index: int,
        batch: Batch,
        views: Sequence[torch.Tensor],
        fresh_rng: RngFactory = contextlib.nullcontext,
    ) -> Grads:
        """Per-parameter ``(k, *shape)`` products for batch ``index`` (``None``: zero)."""
        raise NotImplementedError


class ReverseEngine(HVPEngine):
    """Double backward; the graph lives for one block; one second backward per vector."""

    name = "reverse"

    def batch_products(self, f, index, batch, views, fresh_rng=contextlib.nullcontext):
        theta = f.parameters()
        loss = checked_loss(f, theta, batch, index)
        grads = list(autograd.grad(loss, theta, create_graph=True, allow_unused=True))
        assert_twice_differentiable(grads, "reverse HVP")
        return block_vjp(grads, theta, views, batched=False)


class CachedEngine(HVPEngine):
    """Double backward with each batch's first-order graph kept across products.

    Args:
        budget: Bytes the cached graphs plus one batched second backward may use.
        fused_cross_entropy: Differentiate a plain cross-entropy loss through
            :func:`~landscape_fast.operators.fused_ce.fused_cross_entropy` (its second
            derivative is the fused ``softmax_ce_hvp`` op). The ``reverse`` reference engine
            always uses PyTorch's own ``cross_entropy``, so ``check_hvp`` compares the two.
        batched: ``True``: push the block through one batched second backward
            (``is_grads_batched``, chunked to the budget); ``False``: loop over the block on
            the retained graph; ``None`` (default): loop on CPU, and on CUDA time both on
            the first block of 2+ vectors and keep the faster. On CPU the loop won on every
            workload measured (BENCHMARKS.md: vmapped matmuls are no faster than k plain
            ones on a compute-bound core, and the trial itself cost up to 29 s and 4 GB on
            ResNet-20 with 16 vectors).

    Attributes:
        graph_bytes: Measured bytes of each built batch graph (by batch index).
        batching_note: What the timing found (or why batching was turned off).
    """

    name = "cached"

    def __init__(
        self, budget: int, fused_cross_entropy: bool = True, batched: bool | None = None
    ) -> None:
        self.budget = int(budget)
        self.fused_cross_entropy = fused_cross_entropy
        self._cache: dict[int, tuple[list[torch.Tensor], Grads]] = {}
        self._state: ModelFingerprint | None = None
        self.graph_bytes: dict[int, int] = {}
        self.batched = batched
        self.batching_note: str | None = None

    @property
    def cached_bytes(self) -> int:
        return sum(self.graph_bytes[i] for i in self._cache)

    def reset(self) -> None:
        self._cache.clear()
        self.graph_bytes.clear()
        self._state = None

    def begin_pass(self, f: ModelFunction) -> None:
        if self._state is None or not self._state.matches():  # stale graphs: the model changed
            self.reset()
            self._state = ModelFingerprint(f.model)

    def _build(self, f, index, batch) -> tuple[list[torch.Tensor], Grads]:
        theta = f.parameters()
        loss = checked_loss(f, theta, batch, index, fused=self.fused_cross_entropy)
        grads = list(autograd.grad(loss, theta, create_graph=True, allow_unused=True))
        assert_twice_differentiable(grads, "cached HVP")
        if index not in self.graph_bytes:  # measured once per batch (same graph each pass)
            self.graph_bytes[index] = saved_bytes(grads, exclude=theta)
        meter_bytes = self.graph_bytes[index]
        if self.cached_bytes + meter_bytes <= self.budget // 2:
            self._cache[index] = (theta, grads)
        return theta, grads

    def batch_products(self, f, index, batch, views, fresh_rng=contextlib.nullcontext):
        theta, grads = self._cache.get(index) or self._build(f, index, batch)
        k = views[0].shape[0]
        per_vector = max(self.graph_bytes.get(index, 1), 1)
        room = max(self.budget - self.cached_bytes, per_vector)
        chunk = max(1, min(k, room // per_vector))
        if self.batched is None and views[0].device.type != "cuda":
            self.batched = False
            self.batching_note = "CPU: looped second backward (batched is slower on CPU)"
        if k == 1 or self.batched is False:
            return block_vjp(grads, theta, views, batched=False)
        if self.batched:
            return block_vjp(grads, theta, views, batched=True, chunk=chunk)
        return self._choose(grads, theta, views, chunk)

    def _choose(self, grads: Grads, theta: list[torch.Tensor], views, chunk: int) -> Grads:
        """Time batched against looped second backward on this block; keep the faster.

        Both are warmed up on the first two vectors first (one-time costs: kernel loading,
        vmap set-up), so the comparison is of steady-state costs.
        """
        warm = [v[:2] for v in views]
        block_vjp(grads, theta, warm, batched=False)
        try:
            block_vjp(grads, theta, warm, batched=True, chunk=chunk)
        except RuntimeError as err:  # an op without a batching rule for its backward
            self.batched = False
            self.batching_note = f"batched second backward failed ({err}); looping"
            return block_vjp(grads, theta, views, batched=False)
        start = time.perf_counter()
        looped = block_vjp(grads, theta, views, batched=False)
        t_loop = time.perf_counter() - start
        start = time.perf_counter()
        batched = block_vjp(grads, theta, views, batched=True, chunk=chunk)
        t_batched = time.perf_counter() - start
        self.batched = t_batched < t_loop
        self.batching_note = (
            f"{views[0].shape[0]} vectors: batched {t_batched * 1e3:.1f} ms, "
            f"looped {t_loop * 1e3:.1f} ms"
        )
        return batched if self.batched else looped


class ForwardEngine(HVPEngine):
    """Forward-over-reverse (``torch.func.jvp`` of ``grad``), ``vmap`` over the block.

    Args:
        budget: Bytes the vmapped tangents may use; the block is cut into chunks of
            ``budget // (3 × one batch's graph)`` tangents (measured on first use).
        dropout: Whether dropout is active (vmap then shares one mask across the block).
        chunk: Fixed number of tangents per chunk (overrides the budget).
    """

    name = "forward"

    def __init__(self, budget: int | None = None, dropout: bool = False, chunk: int | None = None):
        self.budget = budget
        self.chunk = chunk
        self.randomness = "same" if dropout else "error"

    def _plan(self, f: ModelFunction, batch: Batch, index: int) -> int | None:
        """Tangents per chunk: the budget over three times one batch's measured graph."""
        if self.chunk is not None or self.budget is None:
            return self.chunk
        theta = f.parameters()
        loss = checked_loss(f, theta, batch, index)
        graph = saved_bytes([loss], exclude=theta)
        del loss
        self.chunk = max(1, self.budget // max(3 * graph, 1))
        return self.chunk

    def batch_products(self, f, index, batch, views, fresh_rng=contextlib.nullcontext):
        from torch.func import grad_and_value, jvp, vmap

        with fresh_rng():
            chunk = self._plan(f, batch, index)
        theta = tuple(f.parameters(requires_grad=False))
        argnums = tuple(range(len(theta)))

        def loss(*t: torch.Tensor) -> torch.Tensor:
            return f.loss(t, batch)

        def hvp(*v: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
            (_, value), (hv, _) = jvp(grad_and_value(loss, argnums=argnums), theta, v)
            return hv, value

        hv, values = vmap(hvp, chunk_size=chunk, randomness=self.randomness)(*views)
        check_finite_loss(values[0], index)
        return list(hv)


class FiniteDifferenceEngine(HVPEngine):
    r"""Central differences of gradients (first derivatives only; see the module docstring).

    Args:
        step_scale: Multiplies the default step :math:`h`. Smaller steps cross fewer kinks
            of piecewise-linear activations (ReLU, max-pool), where a difference of gradients
            sees a jump that the second derivative does not have, at the price of more
            rounding error (:math:`\epsilon / h`).
    """

    name = "finite_difference"
    attention = "default"

    def __init__(self, step_scale: float = 1.0) -> None:
        if not step_scale > 0:
            raise ValueError(f"step_scale must be positive, got {step_scale}")
        self.step_scale = float(step_scale)

    def step(self, theta: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> float:
        r"""The step :math:`h` for direction ``v`` at ``theta``: the perturbation :math:`hv` has
        Euclidean length :math:`\epsilon^{1/3} \max(1, \|\theta\|_\infty)`, whatever
        the number of parameters (a step sized per coordinate would grow like
        :math:`\sqrt p` and cross more activation kinks)."""
        eps = torch.finfo(theta[0].dtype).eps
        theta_max = max(float(t.detach().abs().max()) for t in theta if t.numel())
        v_norm = math.sqrt(sum(float(x.double().square().sum()) for x in v))
        if v_norm == 0.0:
            return 0.0
        return self.step_scale * eps ** (1.0 / 3.0) * max(1.0, theta_max) / v_norm

    def batch_products(self, f, index, batch, views, fresh_rng=contextlib.nullcontext):
        base = f.parameters(requires_grad=False)
        k = views[0].shape[0]
        rows: list[list[torch.Tensor]] = []
        for j in range(k):
            v = [x[j] for x in views]
            h = self.step(base, v)
            if h == 0.0:
                rows.append([torch.zeros_like(t) for t in base])
                continue
            grads = []
            for sign in (1.0, -1.0):
                theta = [(t + (sign * h) * x.to(t.dtype)).requires_grad_() for t, x in zip(base, v)]
                with fresh_rng():
                    loss = checked_loss(f, theta, batch, index)
                g = autograd.grad(loss, theta, allow_unused=True)
                grads.append([torch.zeros_like(t) if gi is None else gi for t, gi in zip(theta, g)])
            rows.append([(a - b) / (2.0 * h) for a, b in zip(*grads)])
        return [torch.stack([r[i] for r in rows]) for i in range(len(base))]


def make_engine(name: str, *, budget: int, dropout: bool) -> HVPEngine:
    """An engine instance for a concrete (non-``auto``) name."""
    if name == "reverse":
        return ReverseEngine()
    if name == "cached":
        return CachedEngine(budget)
    if name == "forward":
        return ForwardEngine(budget, dropout=dropout)
    if name == "finite_difference":
        return FiniteDifferenceEngine()
    raise ValueError(f"no engine named {name!r}")  # pragma: no cover - validated upstream


#: Samples of the first batch on which :func:`probe` tries each engine.
PROBE_SAMPLES = 8

#: Largest disagreement with finite differences (float64, few samples) an exact engine may
#: show in :func:`probe` before it counts as broken.
VERIFY_TOL = 1e-6


def _first_samples(
    f: ModelFunction, batch: Batch, samples: int, rng: RngFactory
) -> tuple[Batch, torch.Tensor]:
    """The first ``samples`` samples of ``batch`` (cast to ``f.dtype`` if it has one) with
    their loss (a graph to the parameters); the whole batch for a closure that cannot take
    a slice."""
    theta = f.parameters(requires_grad=True)
    try:
        small = to_device(slice_batch(batch, 0, samples), f.space.device, f.dtype)
        with rng():
            return small, f.loss(theta, small)
    except Exception:  # a closure that cannot take a slice: use the whole batch
        small = to_device(batch, f.space.device, f.dtype)
    with rng():
        return small, f.loss(theta, small)


def custom_derivative_nodes(loss: torch.Tensor) -> list[str]:
    """Names of the nodes of ``loss``'s autograd graph whose derivatives are user code:
    custom ``autograd.Function`` s (this package's own fused cross-entropy, tested against
    dense Hessians, excepted) and C++ custom functions (``CppNode``). Built-in operators
    either have a second derivative or raise when one is asked for."""
    from landscape_fast.operators import fused_ce

    trusted = (fused_ce._FusedCrossEntropy, fused_ce._CrossEntropyGrad, fused_ce._LogitsHessian)
    found: list[str] = []
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        name = type(node).__name__
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            if getattr(node, "_forward_cls", None) not in trusted:
                found.append(name)
        elif name.startswith("CppNode"):
            found.append(name)
        stack.extend(fn for fn, _ in node.next_functions)
    return sorted(set(found))


def verify_against_finite_differences(
    f: ModelFunction,
    batch: Batch,
    name: str,
    *,
    rng: RngFactory,
    dropout: bool = False,
    samples: int = 8,
) -> float:
    r"""Relative disagreement of engine ``name`` with finite differences, in float64.

    Catches derivative rules that are silently incomplete: a custom ``autograd.Function``
    whose backward is ``once_differentiable`` makes double backward drop second-order
    terms without any error. The check runs the model in float64 on the first ``samples``
    samples of ``batch`` (cheap whatever the model), for one random direction, and keeps
    the smaller error of two finite-difference steps (a step can cross a ReLU kink).
    """
    f64 = ModelFunction(f.model, f.raw_loss, f.space, torch.float64)
    small = _first_samples(f64, batch, samples, rng)[0]
    gen = torch.Generator(device="cpu").manual_seed(1)
    v = torch.randn(1, f.space.numel, generator=gen, dtype=torch.float64)
    views = f.space.views(v.to(f.space.device))
    engine = make_engine(name, budget=1 << 30, dropout=dropout)
    with rng():
        exact = f.space.flatten(
            engine.batch_products(f64, 0, small, views, rng), dtype=torch.float64
        )
    errors = []
    for step_scale in (1.0, 0.05):
        with rng():
            fd_rows = FiniteDifferenceEngine(step_scale).batch_products(f64, 0, small, views, rng)
        errors.append(relative_error(exact, f.space.flatten(fd_rows, dtype=torch.float64)))
    return min(errors)


def probe(
    f: ModelFunction,
    batch: Batch,
    candidates: Sequence[str],
    *,
    budget: int,
    dropout: bool,
    rng: RngFactory,
) -> tuple[HVPEngine | None, dict[str, str]]:
    """The first engine among ``candidates`` that runs on ``batch`` and is right (``None``
    if none is), and why the others were rejected.

    Each candidate computes one product with a random vector on the first samples of the
    batch (failures do not depend on the batch size; the engine returned is a fresh one,
    which plans its memory on the real batches). Where the loss's graph holds derivative
    rules written by users (:func:`custom_derivative_nodes`: a custom ``autograd.Function``
    may drop second-order terms without an error), exact engines are then cross-checked
    against finite differences (:func:`verify_against_finite_differences`); a graph of
    built-in operators needs no check.
    """
    failures: dict[str, str] = {}
    small, loss = _first_samples(f, batch, PROBE_SAMPLES, rng)
    custom = custom_derivative_nodes(loss)
    del loss
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(1, f.space.numel, generator=gen, dtype=torch.float64)
    dtype = f.dtype or f.space.dtype
    views = f.space.views(v.to(device=f.space.device, dtype=dtype))
    for name in candidates:
        trial = make_engine(name, budget=budget, dropout=dropout)
        trial.begin_pass(f)
        try:
            with rng():
                trial.batch_products(f, 0, small, views, rng)
            if name != "finite_difference" and custom:
                error = verify_against_finite_differences(f, batch, name, rng=rng, dropout=dropout)
                if not error <= VERIFY_TOL:
                    failures[name] = (
                        f"disagrees with finite differences by {error:.1e} (relative, float64): "
                        "a layer's second derivative is missing or wrong (e.g. a custom "
                        f"autograd.Function whose backward is once_differentiable; the graph "
                        f"holds {', '.join(custom)})"
                    )
                    continue
        except FloatingPointError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            failures[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        return make_engine(name, budget=budget, dropout=dropout), failures
    return None, failures


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / max(‖b‖, tiny)`` in float64."""
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / max(float(b64.norm()), math.ulp(1.0)))
