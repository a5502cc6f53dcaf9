"""Rebel AdamW: AdamW in which a random fraction of parameter elements move the other way.

At every step each parameter element is, with probability ``rebel_frac``, a *rebel*: it takes
the negation of the change AdamW would give it (``flip="update"``), or its gradient is negated
before it enters the moment estimates (``flip="grad"``). Two control perturbations with the same
per-element mean or the same "dropped update" share the code path: every perturbation is a
per-element multiplier ``m`` and lives in :data:`PERTURBATIONS` as one small function.

The sign and zero perturbations are two-point laws: all but a fraction ``rebel_frac`` of the
elements keep ``m = 1``. For them the optimizer never draws a random number per element: the
positions of the rebels in a flattened group form a Bernoulli process, whose gaps are drawn as
geometric variates (see :func:`rebel_positions`), and only those positions are touched around
an ordinary AdamW step: torch's fused kernel on the CPU (``fused=None``, the default), or the
foreach sequence (``fused=False``; bit for bit ``AdamW(foreach=True)``). A step therefore
costs AdamW plus work proportional to the number of rebels; ``benchmarks/bench_optimizer.py``
measures how much (RESULTS-optimizer.md).

Example::

    optimizer = RebelAdamW(model.parameters(), lr=1e-3, rebel_frac=0.05, seed=0)
    scheduler = RebelFracScheduler(optimizer, start=0.2, end=0.0, total_steps=1000)
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        scheduler.step()
"""

from __future__ import annotations

import functools
import math
import numbers
import zlib
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, chain
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "PERTURBATIONS",
    "Perturbation",
    "RebelAdamW",
    "RebelFracScheduler",
    "gaussian_multiplier",
    "gradient_noise_std",
    "rebel_frac_at",
    "rebel_positions",
    "scale_multiplier",
    "sign_multiplier",
    "zero_multiplier",
]

MASKS = ("resample", "fixed")
# The hyperparameters of a param group, as checked by _check_hyperparameters.
_HYPERPARAMETERS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "rebel_frac",
    "mask",
    "flip",
    "perturbation",
    "grad_noise",
    "grad_noise_decay",
    "fused",
)
FLIPS = ("update", "grad")
SCHEDULE_SHAPES = ("linear", "cosine")

# Each uniform variate comes from a 32-bit word; one 64-bit draw of the generator yields two.
# Every value of a geometric gap's CDF is then off by less than 2**-32 (torch's own float32
# geometric_ works from 24-bit uniforms).
_WORD_BITS = 32
# Geometric gaps drawn beyond the expected number, so that a second draw (the top-up that keeps
# the sampler exact) is rarely needed: mean + 3 standard deviations + 16.
_GAP_MARGIN_SD = 3.0
_GAP_MARGIN_MIN = 16
# Gaps larger than this are clamped before conversion to int64; a gap this large already
# lies past the end of every tensor, so the clamp changes no position that is kept.
_GAP_CLAMP = float(2**53)
# The increment of the step counters (a CPU scalar, as in torch's AdamW; never written to).
_ONE = torch.tensor(1.0)
# State keys of fixed masks that hold int64 flat indices.
_INDEX_KEYS = ("rebel_index", "non_rebel_index")
# Key under which state_dict() stores the seed and the generator states.
_RNG_STATE_KEY = "rebel_rng"


# ---------------------------------------------------------------------------------------------
# Argument checks


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_range(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    high_open: bool = False,
    where: str = "",
) -> None:
    inside = _is_real(value) and low <= value and (value < high if high_open else value <= high)
    if not inside:
        interval = f"[{low}, {high})" if high_open or high == math.inf else f"[{low}, {high}]"
        raise ValueError(f"Invalid {name}{where}: {value!r}; expected a number in {interval}")


def _check_choice(name: str, value: Any, choices: Iterable[str], *, where: str = "") -> None:
    choices = tuple(choices)
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"Invalid {name}{where}: {value!r}; expected one of {valid}")


def _group_values(group: dict[str, Any]) -> tuple:
    """The hyperparameters of a group as a tuple that later edits of the group cannot change."""
    return tuple(
        tuple(group[name]) if isinstance(group[name], list) else group[name]
        for name in _HYPERPARAMETERS
    )


def _check_hyperparameters(group: dict[str, Any], *, where: str = "") -> None:
    """Raise ValueError naming the first bad hyperparameter of a param group (or defaults)."""
    if isinstance(group["lr"], Tensor):
        raise ValueError(f"Invalid lr{where}: a Tensor lr is not supported; pass a float")
    _check_range("lr", group["lr"], 0.0, where=where)
    _check_range("eps", group["eps"], 0.0, where=where)
    _check_range("weight_decay", group["weight_decay"], 0.0, where=where)
    betas = group["betas"]
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise ValueError(f"Invalid betas{where}: {betas!r}; expected a pair (beta1, beta2)")
    _check_range("beta1 (betas[0])", betas[0], 0.0, 1.0, high_open=True, where=where)
    _check_range("beta2 (betas[1])", betas[1], 0.0, 1.0, high_open=True, where=where)
    _check_range("rebel_frac", group["rebel_frac"], 0.0, 1.0, where=where)
    _check_choice("mask", group["mask"], MASKS, where=where)
    _check_choice("flip", group["flip"], FLIPS, where=where)
    _check_choice("perturbation", group["perturbation"], PERTURBATIONS, where=where)
    _check_range("grad_noise", group["grad_noise"], 0.0, where=where)
    _check_range("grad_noise_decay", group["grad_noise_decay"], 0.0, where=where)
    if group["fused"] not in (None, True, False):
        raise ValueError(f"Invalid fused{where}: {group['fused']!r}; expected True, False or None")


# ---------------------------------------------------------------------------------------------
# Sampling: Bernoulli positions from geometric gaps


class _Workspace:
    """Scratch buffers kept from step to step, by name, dtype and device.

    Allocating fresh memory for every draw costs about as much as the arithmetic on it (new
    memory is faulted in and cold in cache), so the sampler and the fix-ups write in here.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}
        self._constants: dict[tuple[str, torch.dtype, torch.device], float] = {}
        self._ends: dict[tuple[torch.device, tuple[int, ...]], Tensor] = {}

    def buffer(self, name: str, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (name, dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size:
            # Headroom, because the number of rebels varies from step to step.
            buffer = torch.empty(size + size // 4 + 64, dtype=dtype, device=device)
            self._buffers[key] = buffer
            self._constants.pop(key, None)
        return buffer[:size]

    def constant(
        self, name: str, size: int, value: float, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """``size`` copies of ``value``; refilled only when the value or the buffer changes."""
        key = (name, dtype, device)
        constant = self.buffer(name, size, dtype, device)
        if self._constants.get(key) != value:
            self._buffers[key].fill_(value)
            self._constants[key] = value
        return constant

    def ends(self, numels: Sequence[int], device: torch.device) -> Tensor:
        """The cumulative sizes of tensors laid end to end, as a tensor on ``device``."""
        key = (device, tuple(numels))
        ends = self._ends.get(key)
        if ends is None:
            ends = torch.tensor(list(accumulate(numels)), dtype=torch.int64, device=device)
            self._ends[key] = ends
        return ends


def _geometric_gaps(
    count: int,
    prob: float,
    *,
    generator: torch.Generator,
    device: Any,
    workspace: _Workspace,
    out: Tensor | None = None,
) -> Tensor:
    """``count`` int64 Geometric(prob) variates on {1, 2, ...}: P(G = k) = (1-prob)^(k-1) prob.

    Inversion: for U uniform on (0, 1), G = 1 + floor(log U / log(1 - prob)) has
    P(G > k) = P(U < (1 - prob)^k) = (1 - prob)^k. U takes the 2**32 values (j + 1/2) / 2**32.
    """
    bits = workspace.buffer("bits", (count + 1) // 2, torch.int64, device)
    # The full 64-bit range: each draw holds two independent, uniform 32-bit words.
    words = bits.random_(-(2**63), None, generator=generator).view(torch.int32)[:count]
    logs = workspace.buffer("uniform", count, torch.float64, device)
    logs.copy_(words)  # exact: every int32 is a float64

    # log U with U = (word + 2**31 + 1/2) / 2**32, strictly inside (0, 1), so log U < 0.
    logs.add_(2.0 ** (_WORD_BITS - 1) + 0.5).mul_(2.0**-_WORD_BITS).log_()
    logs.mul_(1.0 / math.log1p(-prob))
    if _WORD_BITS * math.log(2.0) / -math.log1p(-prob) > _GAP_CLAMP:
        logs.clamp_(max=_GAP_CLAMP)
    logs.add_(1.0)

    # Conversion to int64 truncates, which is floor for these positive values.
    gaps = torch.empty(count, dtype=torch.int64, device=device) if out is None else out
    return gaps.copy_(logs)


def _bernoulli_positions(
    numel: int,
    prob: float,
    *,
    generator: torch.Generator,
    device: Any,
    workspace: _Workspace | None = None,
) -> Tensor:
    """Sorted positions of the successes among ``numel`` independent Bernoulli(prob) trials.

    The result may end with positions >= ``numel``; callers cut them off. The cost is
    O(numel * prob) random draws, which is why callers pass prob <= 0.5 (for larger
    probabilities they draw the failures instead). With a workspace the result is a view of
    one of its buffers, valid until the next draw.
    """
    own_buffers = workspace is None
    workspace = _Workspace() if workspace is None else workspace
    chunks = []
    last = -1  # position of the latest success drawn so far; -1 before the first
    while True:
        # Enough gaps to pass the end with high probability; if they do not, the loop draws
        # more from where they stopped, so the process is never truncated.
        remaining = numel - 1 - last
        mean = remaining * prob
        count = int(mean + _GAP_MARGIN_SD * math.sqrt(mean * (1.0 - prob))) + _GAP_MARGIN_MIN
        count = max(count, 1)
        out = None
        if not chunks and not own_buffers:
            out = workspace.buffer("positions", count, torch.int64, device)
        positions = _geometric_gaps(
            count, prob, generator=generator, device=device, workspace=workspace, out=out
        )
        positions[:1].add_(last)
        positions.cumsum_(0)
        chunks.append(positions)
        last = int(positions[-1])
        if last >= numel:
            break
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _split_positions(
    positions: Tensor, numels: Sequence[int], ends: Tensor
) -> list[tuple[int, Tensor, int, int]]:
    """Cut sorted positions in tensors laid end to end into per-tensor flat indices.

    Returns (tensor number, its flat indices, start, stop) for each tensor with at least one
    position, where positions[start:stop] were its positions; positions past the end are
    dropped. The indices are views of ``positions``, which is overwritten.
    """
    cuts = torch.searchsorted(positions, ends).tolist()
    pieces = list(positions.tensor_split(cuts)[: len(numels)])
    if len(pieces) > 1:
        # Subtract each tensor's offset in place, in one call for all tensors.
        torch._foreach_sub_(pieces[1:], list(accumulate(numels[:-1])))
    split, start = [], 0
    for i, stop in enumerate(cuts):
        if stop > start:
            split.append((i, pieces[i], start, stop))
        start = stop
    return split


def rebel_positions(
    numel: int,
    rebel_frac: float,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sorted flat positions of the rebels among ``numel`` elements.

    Each element is a rebel independently with probability ``rebel_frac``. For rebel_frac <= 0.5
    the gaps between consecutive rebels are drawn as i.i.d. Geometric(rebel_frac) variates,
    so the cost is proportional to the number of rebels; the draw continues until it passes the
    end, so there is no truncation bias. For rebel_frac > 0.5 the non-rebels are drawn the same
    way and the complement is returned.

    Args:
        numel: number of elements (>= 0).
        rebel_frac: probability that an element is a rebel, in [0, 1].
        generator: the source of all randomness; the global RNG is not touched.
        device: device of the result (default: the generator's device).
    """
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"Invalid numel: {numel!r}; expected an int >= 0")
    _check_range("rebel_frac", rebel_frac, 0.0, 1.0)
    device = generator.device if device is None else torch.device(device)
    complement = rebel_frac > 0.5
    prob = 1.0 - rebel_frac if complement else rebel_frac
    if prob == 0.0 or numel == 0:
        drawn = torch.empty(0, dtype=torch.int64, device=device)
    else:
        drawn = _bernoulli_positions(numel, prob, generator=generator, device=device)
        drawn = drawn[drawn < numel]
    if not complement:
        return drawn
    is_rebel = torch.ones(numel, dtype=torch.bool, device=device)
    is_rebel[drawn] = False
    return is_rebel.nonzero().view(-1)


# ---------------------------------------------------------------------------------------------
# Perturbations: per-element multipliers


def _two_point_multiplier(
    shape: Sequence[int] | torch.Size,
    rebel_frac: float,
    rebel_value: float,
    *,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: Any,
) -> Tensor:
    multiplier = torch.ones(shape, dtype=dtype, device=device)
    positions = rebel_positions(multiplier.numel(), rebel_frac, generator=generator, device=device)
    multiplier.view(-1)[positions] = rebel_value
    return multiplier


def sign_multiplier(
    shape: Sequence[int] | torch.Size,
    rebel_frac: float,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> Tensor:
    """The rebels: m = -1 with probability rebel_frac, else +1 (mean 1-2p, variance 4p(1-p))."""
    return _two_point_multiplier(
        shape, rebel_frac, -1.0, generator=generator, dtype=dtype, device=device
    )


def zero_multiplier(
    shape: Sequence[int] | torch.Size,
    rebel_frac: float,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> Tensor:
    """Update dropout: m = 0 with probability rebel_frac, else 1 (mean 1-p, variance p(1-p))."""
    return _two_point_multiplier(
        shape, rebel_frac, 0.0, generator=generator, dtype=dtype, device=device
    )


def gaussian_multiplier(
    shape: Sequence[int] | torch.Size,
    rebel_frac: float,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> Tensor:
    """Noise control: m ~ Normal(1-2p, 4p(1-p)), the sign flip's mean and variance, no signs."""
    _check_range("rebel_frac", rebel_frac, 0.0, 1.0)
    device = generator.device if device is None else device
    std = 2.0 * math.sqrt(rebel_frac * (1.0 - rebel_frac))
    multiplier = torch.empty(shape, dtype=dtype, device=device)
    return multiplier.normal_(1.0 - 2.0 * rebel_frac, std, generator=generator)


def scale_multiplier(
    shape: Sequence[int] | torch.Size,
    rebel_frac: float,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> Tensor:
    """Mean control: m = 1-2p for every element, the sign flip's mean without its noise.

    With flip="update" this is AdamW at learning rate lr * (1-2p): the decoupled weight decay
    is part of the update and scales with it. Nothing is drawn from ``generator``.
    """
    _check_range("rebel_frac", rebel_frac, 0.0, 1.0)
    device = generator.device if device is None else device
    return torch.full(tuple(shape), 1.0 - 2.0 * rebel_frac, dtype=dtype, device=device)


class Perturbation(NamedTuple):
    """A perturbation law: a function drawing the dense multiplier, and for two-point laws
    (m = rebel_value with probability rebel_frac, else 1) the rebel value, which lets the
    optimizer touch only the rebels instead of multiplying every element."""

    multiplier: Callable[..., Tensor]
    rebel_value: float | None = None


PERTURBATIONS: dict[str, Perturbation] = {
    "sign": Perturbation(sign_multiplier, rebel_value=-1.0),
    "gaussian": Perturbation(gaussian_multiplier),
    "scale": Perturbation(scale_multiplier),
    "zero": Perturbation(zero_multiplier, rebel_value=0.0),
}


def gradient_noise_std(earlier_steps: int, grad_noise: float, grad_noise_decay: float) -> float:
    """sigma_t = sqrt(grad_noise / (1 + t)^grad_noise_decay), t = steps taken before this one."""
    return math.sqrt(grad_noise / (1.0 + earlier_steps) ** grad_noise_decay)


# ---------------------------------------------------------------------------------------------
# Seeds


def _splitmix64(value: int) -> int:
    """One round of SplitMix64: decorrelates nearby seeds (0, 1, 2, ...)."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def _device_seed(seed: int, device_key: str) -> int:
    mixed = _splitmix64((seed & 0xFFFFFFFFFFFFFFFF) ^ zlib.crc32(device_key.encode()))
    return mixed & 0x7FFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The AdamW step and the rebel fix-ups


def _adamw_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    before_update: Callable[[list[Tensor]], None] | None = None,
) -> None:
    """One step of torch.optim.AdamW(foreach=True) for tensors on one device and dtype.

    The same operations in the same order as torch, so rebel_frac=0 reproduces it bit for bit.
    ``before_update``, if given, may edit the denominators sqrt(v_hat) + eps in place just
    before they divide the update.
    """
    # The steps live on the CPU; one wrapped 1 for all of them avoids a tensor per parameter.
    torch._foreach_add_(steps, _ONE, alpha=1.0)

    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)

    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    bias_correction1 = [1 - beta1 ** step.item() for step in steps]
    bias_correction2 = [1 - beta2 ** step.item() for step in steps]
    step_size = [(lr / correction) * -1 for correction in bias_correction1]
    bias_correction2_sqrt = [correction**0.5 for correction in bias_correction2]

    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    if before_update is not None:
        before_update(denom)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


def _adamw_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One step of torch.optim.AdamW(fused=True) for CPU tensors of one dtype.

    torch's fused kernel: every element is read and written once, about three times faster
    than the foreach sequence on the CPU, and bit for bit what AdamW(fused=True) computes.
    """
    torch._foreach_add_(steps, _ONE, alpha=1.0)
    torch._fused_adamw_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        amsgrad=False,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        maximize=False,
    )


def _gather(tensor: Tensor, index: Tensor, out: Tensor | None = None) -> Tensor:
    """tensor.flatten()[index], without copying the tensor."""
    # index_select on a flat view is the fastest gather; take() also handles other layouts.
    if tensor.dim() == 1:
        return torch.index_select(tensor, 0, index, out=out)
    if tensor.is_contiguous():
        return torch.index_select(tensor.view(-1), 0, index, out=out)
    return torch.take(tensor, index, out=out)


def _scatter_(tensor: Tensor, index: Tensor, values: Tensor) -> None:
    """tensor.flatten()[index] = values, in place."""
    if tensor.dim() == 1:
        tensor.scatter_(0, index, values)  # faster than index_copy_ on the CPU
    elif tensor.is_contiguous():
        tensor.view(-1).scatter_(0, index, values)  # faster than index_copy_ on the CPU
    else:
        tensor.put_(index, values)


def _multiply_at_(tensor: Tensor, index: Tensor, factors: Tensor) -> None:
    """tensor.flatten()[index] *= factors, in place, reading and writing each element once."""
    if tensor.is_contiguous():
        tensor.view(-1).scatter_reduce_(0, index, factors, "prod")
    else:
        tensor.put_(index, _gather(tensor, index).mul_(factors))


def _scaled(tensor: Tensor, factor: float, out: Tensor | None = None) -> Tensor:
    """factor * tensor; for factor 0 exact zeros (0 * inf would be nan)."""
    if factor == 0.0:
        return torch.zeros_like(tensor) if out is None else out.zero_()
    return torch.mul(tensor, factor, out=out)


class _TwoPointPlan(NamedTuple):
    """The multipliers of a two-point law (rebel_value with probability p, else 1), sparsely.

    ``sparse`` lists tensors with few rebels as (tensor number, flat indices of its rebels,
    start, stop): the slice of a scratch buffer of length ``sparse_size`` that holds values at
    those indices. ``dense`` lists tensors that are mostly rebels (p > 0.5) as (tensor number,
    flat indices of its non-rebels or None). Tensors in neither list have no rebels.
    """

    rebel_value: float
    sparse: list[tuple[int, Tensor, int, int]]
    sparse_size: int
    dense: list[tuple[int, Tensor | None]]


class _DensePlan(NamedTuple):
    """One multiplier per element, a tensor per parameter."""

    multipliers: list[Tensor]


def _step_flipping_updates(
    plan: _TwoPointPlan | _DensePlan,
    params: list[Tensor],
    adamw_step: Callable[..., None],
    workspace: _Workspace,
    *,
    decay: float,
    fold: bool,
) -> None:
    """theta <- theta_old + m * (theta_adamw - theta_old), where theta_adamw is AdamW's step.

    ``adamw_step(before_update=None)`` runs that step on all elements; ``decay`` is
    lr * weight_decay. ``fold`` says whether ``adamw_step`` accepts a ``before_update`` hook
    (the foreach core does, torch's fused kernel does not).
    """
    if isinstance(plan, _DensePlan):
        before = torch._foreach_mul(params, 1.0)  # copies, in one call
        adamw_step()
        # lerp(theta_adamw, theta_old, 1 - m) = theta_old + m * (theta_adamw - theta_old)
        weights = [1.0 - multiplier for multiplier in plan.multipliers]
        torch._foreach_lerp_(params, before, weights)
        return

    rebel_value = plan.rebel_value
    dtype, device = params[0].dtype, params[0].device
    size = plan.sparse_size
    dense_before = [params[i].clone() for i, _ in plan.dense]

    if plan.sparse and fold and rebel_value != 0.0 and decay != 1.0:
        # Fold the multiplier r into the step itself. AdamW gives theta_old * (1 - decay) + u
        # with u = step_size * exp_avg / denom; a rebel needs theta_old * (1 - r * decay) + r * u.
        # So scale the rebels by (1 - r * decay) / (1 - decay) before the step and divide their
        # denominators by r inside it: two read-modify-writes per rebel instead of reading
        # theta before and after the step and writing it back.
        if decay != 0.0:
            ratio = (1.0 - rebel_value * decay) / (1.0 - decay)
            factors = workspace.constant("decay_factors", size, ratio, dtype, device)
            for i, index, start, stop in plan.sparse:
                _multiply_at_(params[i], index, factors[start:stop])

        def flip_denominators(denom: list[Tensor]) -> None:
            factors = workspace.constant("denom_factors", size, 1.0 / rebel_value, dtype, device)
            for i, index, start, stop in plan.sparse:
                _multiply_at_(denom[i], index, factors[start:stop])

        adamw_step(before_update=flip_denominators)
    elif plan.sparse:
        # Read the rebels before and after the step: m = 0 keeps theta_old, other m lerp.
        # The loops below run once per tensor with rebels on every step: one op per tensor.
        cuts = [stop for _, _, _, stop in plan.sparse[:-1]]
        indices = [index for _, index, _, _ in plan.sparse]
        # Flat views of contiguous tensors; take() and put_() handle the others.
        flats = [
            params[i].view(-1) if params[i].is_contiguous() else params[i]
            for i, _, _, _ in plan.sparse
        ]
        before = workspace.buffer("before", size, dtype, device)
        befores = before.tensor_split(cuts)
        for flat, index, out in zip(flats, indices, befores, strict=True):
            _gather(flat, index, out=out)
        adamw_step()
        if rebel_value != 0.0:
            after = workspace.buffer("after", size, dtype, device)
            for flat, index, out in zip(flats, indices, after.tensor_split(cuts), strict=True):
                _gather(flat, index, out=out)
            before.lerp_(after, rebel_value)
        for flat, index, values in zip(flats, indices, befores, strict=True):
            _scatter_(flat, index, values)
    else:
        adamw_step()

    # Tensors that are mostly rebels: rewrite them whole, then put back the obedient few.
    if plan.dense:
        kept = [
            (i, index, _gather(params[i], index)) for i, index in plan.dense if index is not None
        ]
        dense_params = [params[i] for i, _ in plan.dense]
        torch._foreach_lerp_(dense_params, dense_before, 1.0 - rebel_value)
        for i, index, values in kept:
            _scatter_(params[i], index, values)


def _step_flipping_grads(
    plan: _TwoPointPlan | _DensePlan,
    grads: list[Tensor],
    adamw_step: Callable[[list[Tensor]], None],
    workspace: _Workspace,
    *,
    grads_are_copies: bool,
) -> None:
    """g <- m * g before the moments; p.grad is left as it was found."""
    if isinstance(plan, _DensePlan):
        adamw_step(torch._foreach_mul(grads, plan.multipliers))
        return

    rebel_value = plan.rebel_value
    grads = list(grads)

    # Tensors that are mostly rebels: a scaled copy, with the obedient gradients put back.
    for i, index in plan.dense:
        scaled = _scaled(grads[i], rebel_value)
        if index is not None:
            _scatter_(scaled, index, _gather(grads[i], index))
        grads[i] = scaled

    if not plan.sparse:
        adamw_step(grads)
        return
    dtype, device = grads[0].dtype, grads[0].device
    size = plan.sparse_size

    if grads_are_copies or rebel_value == -1.0:
        # Multiply the rebels' gradients in place: in our own copies by any factor, in p.grad
        # only by -1, which multiplying again undoes exactly.
        restore = []
        for i, index, start, stop in plan.sparse:
            if grads_are_copies:
                continue
            if grads[i].is_contiguous():
                restore.append((grads[i], index, start, stop))
            else:
                grads[i] = grads[i].clone()
        factors = workspace.constant("grad_factors", size, rebel_value, dtype, device)
        for i, index, start, stop in plan.sparse:
            if rebel_value == 0.0:
                _scatter_(grads[i], index, factors[start:stop])  # 0 * inf would be nan
            else:
                _multiply_at_(grads[i], index, factors[start:stop])
        try:
            adamw_step(grads)
        finally:
            for grad, index, start, stop in restore:
                _multiply_at_(grad, index, factors[start:stop])
        return

    # Other multipliers on p.grad: overwrite the rebels, then put their true gradients back.
    true_values = workspace.buffer("true_grads", size, dtype, device)
    restore = []
    for i, index, start, stop in plan.sparse:
        if grads[i].is_contiguous():
            restore.append((grads[i], index, start, stop))
        else:
            grads[i] = grads[i].clone()
        _gather(grads[i], index, out=true_values[start:stop])
    flipped = _scaled(
        true_values, rebel_value, out=workspace.buffer("flipped", size, dtype, device)
    )
    try:
        for i, index, start, stop in plan.sparse:
            _scatter_(grads[i], index, flipped[start:stop])
        adamw_step(grads)
    finally:
        for grad, index, start, stop in restore:
            _scatter_(grad, index, true_values[start:stop])


def _use_fused(fused: bool | None, device: torch.device) -> bool:
    """Whether a bucket on ``device`` may step with torch's fused kernel (None: on the CPU)."""
    if fused is None:
        return device.type == "cpu"
    if fused and device.type != "cpu":
        raise ValueError(
            f"Invalid fused: True, but parameters are on {device}; RebelAdamW's fused core is "
            "for CPU tensors. Pass fused=None (the default) or fused=False"
        )
    return fused


def _layouts_match(params: list[Tensor], *tensor_lists: list[Tensor]) -> bool:
    """Whether every parameter has the strides of its gradient and moments.

    torch's fused CPU kernel walks the four tensors as if they had one memory layout; when their
    strides differ (a transposed parameter with a contiguous gradient, say) its result is
    silently wrong (torch 2.14; pytorch/pytorch#106951 reports such mismatches, which autograd
    can produce, making fused Adam raise on CUDA). Buckets where they differ take the foreach
    sequence, which is correct for any layout.
    """
    strides = [param.stride() for param in params]
    return all([tensor.stride() for tensor in tensors] == strides for tensors in tensor_lists)


# ---------------------------------------------------------------------------------------------
# The optimizer


class RebelAdamW(Optimizer):
    r"""AdamW in which a random fraction of parameter elements, the rebels, move the other way.

    Let :math:`\gamma` be lr, :math:`\beta_1, \beta_2` betas, :math:`\epsilon` eps,
    :math:`\lambda` weight_decay, :math:`p` rebel_frac, :math:`\eta` grad_noise and
    :math:`\kappa` grad_noise_decay. For every parameter :math:`\theta` with a gradient
    :math:`g`, with :math:`t` this parameter's step number (1 on its first step) and every
    operation element-wise, one call of :meth:`step` does::

        m        ~ the perturbation law with parameter p, one value per element (below)
        g~       = g + sigma_t * xi,  xi ~ N(0, I),  sigma_t^2 = eta / t^kappa
                                                      (only if eta > 0; p.grad is not changed)
        if flip == "grad":   g~ = m * g~              (noise first, then the multiplier)
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * g~
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g~^2
        delta      = -lr * lambda * theta
                     - lr * (exp_avg / (1 - beta1^t)) / (sqrt(exp_avg_sq / (1 - beta2^t)) + eps)
        if flip == "update": theta = theta + m * delta
        if flip == "grad":   theta = theta + delta

    ``theta + delta`` is exactly torch.optim.AdamW's step (decoupled weight decay
    ``theta *= 1 - lr * weight_decay``, bias-corrected moments, no amsgrad), and with ``m = 1``
    everywhere (rebel_frac = 0) the optimizer reproduces torch's AdamW bit for bit: its fused
    kernel (``AdamW(fused=True)``) with the default ``fused=None`` on the CPU, and
    ``AdamW(foreach=True)`` with ``fused=False`` or off the CPU.
    The noise variance written with the number of earlier steps s = t - 1 is
    eta / (1 + s)^kappa (Neelakantan et al. 2015, arXiv:1511.06807): s = 0 on the first step.

    What a rebel (m = -1) does in each flip mode:

    * ``flip="update"``: the moments see the true gradient; the whole change AdamW would make is
      negated, weight decay included: theta_new = theta_old - (theta_adamw - theta_old).
    * ``flip="grad"``: the rebel's gradient is negated before it enters both moments
      (exp_avg_sq is unchanged by the sign, exp_avg is not); the step is then plain AdamW,
      so weight decay still shrinks rebels.

    Perturbation laws (``perturbation``), registered in :data:`PERTURBATIONS`:

    * ``"sign"``: m = -1 with probability p, else +1 (mean 1 - 2p, variance 4p(1 - p)).
    * ``"gaussian"``: m ~ N(1 - 2p, 4p(1 - p)) per element, the sign flip's mean and variance
      without its sign structure. It needs one normal draw per element, so it is much slower.
    * ``"zero"``: m = 0 with probability p, else 1 (update dropout; mean 1 - p).
    * ``"scale"``: m = 1 - 2p for every element, the sign flip's mean without its noise; with
      ``flip="update"`` this is AdamW at learning rate lr * (1 - 2p).

    Masks (``mask``):

    * ``"resample"``: a fresh, independent m for every element at every step.
    * ``"fixed"``: m is drawn once per parameter, at that parameter's first step, with the
      group's rebel_frac at that moment, and kept for good in ``self.state[param]`` (the keys
      ``rebel_index`` or ``non_rebel_index`` hold sorted flat indices for two-point laws,
      ``rebel_multiplier`` the dense multiplier for "gaussian" and "scale"). If rebel_frac
      changes later, a fixed mask stays as drawn; switching between "sign" and "zero" keeps who
      rebels.

    Randomness: every draw comes from the optimizer's own ``torch.Generator``, one per device the
    parameters live on (CUDA parameters use a CUDA generator), never from the global RNG, so two
    runs that differ only in rebel_frac share initialisation, data order and dropout. The
    generator of device ``d`` is seeded with SplitMix64(seed xor crc32(str(d))). With
    ``seed=None`` the seed is ``torch.initial_seed()`` read at construction: a read, not a draw,
    so it consumes nothing from the global RNG. ``state_dict()`` holds the seed and the generator
    states and ``load_state_dict()`` restores them, so a resumed run draws the same masks as an
    uninterrupted one.

    Speed: for the two-point laws ("sign", "zero") no random number is drawn per element. The
    rebels' flat positions across all parameters of a group on one device are a Bernoulli
    process, drawn from geometric gaps (for p > 0.5 the non-rebels instead), so a step costs an
    AdamW step plus O(number of rebels). The AdamW step itself is torch's fused CPU kernel by
    default (one pass over memory, about 3x faster than the foreach sequence); around it the
    rebels are read before and after the step and set to theta_old + m * (theta_adamw -
    theta_old). With the foreach core (``fused=False``) the sign flip is instead folded into the
    step: each rebel is first multiplied by (1 + lr * weight_decay) / (1 - lr * weight_decay)
    and its denominator sqrt(v_hat) + eps is negated inside the step. Either way a rebel lands
    on theta_old - delta up to rounding. "gaussian" and "scale" multiply every element.
    torch's fused kernel assumes that a parameter, its gradient and its moments share strides;
    buckets where they do not (a transposed parameter with a contiguous gradient) take the
    foreach sequence, because the kernel's result would be silently wrong there (torch 2.14).
    Measured cost (benchmarks/RESULTS-optimizer.md, one thread of a 2-core CPU): at
    rebel_frac=0.05 a step takes 0.71 to 1.11 ``AdamW(foreach=True)`` steps on the book's
    models, or 2.4 to 3.5 ``AdamW(fused=True)`` steps; with ``fused=False``, 1.4 to 1.7
    foreach steps.

    Args:
        params (iterable): parameters or dicts defining parameter groups. Every keyword below is
            also a group option, so groups may differ (e.g. per-layer rebel_frac).
        lr (float, optional): learning rate (default: 1e-3)
        betas (Tuple[float, float], optional): coefficients of the running averages of the
            gradient and its square (default: (0.9, 0.999))
        eps (float, optional): added to the denominator for numerical stability (default: 1e-8)
        weight_decay (float, optional): decoupled weight decay coefficient (default: 1e-2)
        rebel_frac (float, optional): probability that an element is a rebel, in [0, 1]; may be
            changed between steps, e.g. by :class:`RebelFracScheduler` (default: 0.0)
        mask (str, optional): "resample" or "fixed" (default: "resample")
        flip (str, optional): "update" or "grad" (default: "update")
        perturbation (str, optional): "sign", "gaussian", "zero" or "scale" (default: "sign")
        grad_noise (float, optional): eta, variance of the annealed gradient noise at the first
            step; 0 turns it off (default: 0.0)
        grad_noise_decay (float, optional): kappa, decay exponent of that variance (default: 0.55)
        seed (int, optional): seed of the optimizer's generators; None derives it from
            ``torch.initial_seed()`` without drawing from the global RNG (default: None)
        fused (bool, optional): the AdamW core. None: torch's fused kernel for CPU tensors, the
            foreach sequence elsewhere; True: the fused kernel (CPU tensors only, else
            ValueError); False: the foreach sequence (default: None)

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = RebelAdamW(model.parameters(), lr=1e-3, rebel_frac=0.05, seed=0)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        rebel_frac: float = 0.0,
        mask: str = "resample",
        flip: str = "update",
        perturbation: str = "sign",
        grad_noise: float = 0.0,
        grad_noise_decay: float = 0.55,
        seed: int | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            rebel_frac=rebel_frac,
            mask=mask,
            flip=flip,
            perturbation=perturbation,
            grad_noise=grad_noise,
            grad_noise_decay=grad_noise_decay,
            fused=fused,
        )
        _check_hyperparameters(defaults)
        if seed is not None and not (isinstance(seed, numbers.Integral) and _is_real(seed)):
            raise ValueError(f"Invalid seed: {seed!r}; expected an int or None")
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending_generator_states: dict[str, Tensor] = {}
        self._workspace = _Workspace()
        self._checked_values: dict[int, tuple] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, checking its hyperparameters and parameters first."""
        if isinstance(param_group, dict):
            merged = {**self.defaults, **param_group}
            _check_hyperparameters(merged, where=f" in param group {len(self.param_groups)}")
            params = param_group.get("params", [])
            if not isinstance(params, set):  # torch rejects sets (no order) itself
                params = [params] if isinstance(params, Tensor) else list(params)
                param_group = {**param_group, "params": params}
            for param in params:
                if isinstance(param, Tensor) and merged["fused"]:
                    _use_fused(True, param.device)
                if isinstance(param, Tensor) and param.is_complex():
                    raise ValueError(
                        "Invalid parameter: RebelAdamW does not support complex parameters "
                        f"(got dtype {param.dtype}); split them into real and imaginary parts"
                    )
        super().add_param_group(param_group)

    # -- randomness ------------------------------------------------------------------------

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        generator = self._generators.get(key)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(_device_seed(self.seed, key))
            pending = self._pending_generator_states.pop(key, None)
            if pending is not None:
                generator.set_state(pending)
            self._generators[key] = generator
        return generator

    def _generator_states(self) -> dict[str, Tensor]:
        states = {key: state.clone() for key, state in self._pending_generator_states.items()}
        states.update({key: gen.get_state() for key, gen in self._generators.items()})
        return states

    def _restore_rng(self, seed: int, generator_states: dict[str, Tensor]) -> None:
        # Generators are (re)created lazily from these states, on whatever device is present.
        self.seed = int(seed)
        self._generators = {}
        self._pending_generator_states = {
            key: state.clone() for key, state in generator_states.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state dict plus the seed and the generator states."""
        state_dict = super().state_dict()
        state_dict[_RNG_STATE_KEY] = {
            "seed": self.seed,
            "generator_states": self._generator_states(),
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or from torch.optim.AdamW: then the
        generators keep their current state)."""
        state_dict = dict(state_dict)
        rng = state_dict.pop(_RNG_STATE_KEY, None)

        # torch casts every state tensor to its parameter's dtype, which would turn the fixed
        # masks' indices into floats (inexact above 2**24 in float32): set them aside.
        indices = {}
        state = {}
        for key, param_state in state_dict["state"].items():
            state[key] = {k: v for k, v in param_state.items() if k not in _INDEX_KEYS}
            indices[key] = {k: v for k, v in param_state.items() if k in _INDEX_KEYS}
        state_dict["state"] = state
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, param in zip(saved_ids, params, strict=True):
            for key, index in indices.get(saved_id, {}).items():
                self.state[param][key] = index.to(device=param.device, dtype=torch.int64)

        if rng is not None:
            self._restore_rng(rng["seed"], rng["generator_states"])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state[_RNG_STATE_KEY] = {
            "seed": self.seed,
            "generator_states": self._generator_states(),
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        rng = state.pop(_RNG_STATE_KEY, None)
        super().__setstate__(state)
        # Unpickling skips __init__; load_state_dict() keeps what exists.
        self.__dict__.setdefault("_generators", {})
        self.__dict__.setdefault("_pending_generator_states", {})
        self.__dict__.setdefault("_workspace", _Workspace())
        self.__dict__.setdefault("_checked_values", {})
        # Groups saved by torch.optim.AdamW lack the rebel options: use this optimizer's.
        for group in self.param_groups:
            for name, default in self.defaults.items():
                group.setdefault(name, default)
        if rng is not None:
            self._restore_rng(rng["seed"], rng["generator_states"])

    # -- the step --------------------------------------------------------------------------

    def _init_group(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("RebelAdamW does not support sparse gradients")
            state = self.state[param]
            if len(state) == 0:
                # As torch: the step count is a CPU scalar, float64 only if that is the default.
                step_dtype = (
                    torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                )
                state["step"] = torch.tensor(0.0, dtype=step_dtype)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): a closure that reevaluates the model and returns the
                loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for number, group in enumerate(self.param_groups):
            # A scheduler or the user may have edited the group since it was last checked.
            values = _group_values(group)
            if self._checked_values.get(number) != values:
                _check_hyperparameters(group, where=f" in param_groups[{number}]")
                self._checked_values[number] = values
            params, grads, exp_avgs, exp_avg_sqs, steps = self._init_group(group)
            if not params:
                continue
            buckets = Optimizer._group_tensors_by_device_and_dtype(
                [params, grads, exp_avgs, exp_avg_sqs, steps]
            )
            for (device, _), (tensor_lists, _) in buckets.items():
                self._step_bucket(group, *tensor_lists, generator=self._generator(device))
        return loss

    def _step_bucket(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
        *,
        generator: torch.Generator,
    ) -> None:
        """Step the parameters of one group that share a device and a dtype."""
        beta1, beta2 = group["betas"]
        fused = _use_fused(group["fused"], params[0].device) and _layouts_match(
            params, grads, exp_avgs, exp_avg_sqs
        )
        checked_grads = grads
        hyper = dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )

        def adamw_step(
            step_grads: list[Tensor],
            before_update: Callable[[list[Tensor]], None] | None = None,
        ) -> None:
            if fused and (step_grads is checked_grads or _layouts_match(params, step_grads)):
                _adamw_fused(params, step_grads, exp_avgs, exp_avg_sqs, steps, **hyper)
            else:
                _adamw_foreach(
                    params,
                    step_grads,
                    exp_avgs,
                    exp_avg_sqs,
                    steps,
                    before_update=before_update,
                    **hyper,
                )

        grads_are_copies = group["grad_noise"] > 0
        if grads_are_copies:
            grads = self._noisy_grads(group, grads, steps, generator)

        plan = self._draw_plan(group, params, generator)
        if plan is None:
            adamw_step(grads)
        elif group["flip"] == "update":
            _step_flipping_updates(
                plan,
                params,
                functools.partial(adamw_step, grads),
                self._workspace,
                decay=group["lr"] * group["weight_decay"],
                fold=not fused,
            )
        else:
            _step_flipping_grads(
                plan, grads, adamw_step, self._workspace, grads_are_copies=grads_are_copies
            )

    @staticmethod
    def _noisy_grads(
        group: dict[str, Any],
        grads: list[Tensor],
        steps: list[Tensor],
        generator: torch.Generator,
    ) -> list[Tensor]:
        noisy = []
        for grad, step in zip(grads, steps, strict=True):
            # The step counter is still at the number of earlier steps here.
            std = gradient_noise_std(
                int(step.item()), group["grad_noise"], group["grad_noise_decay"]
            )
            noise = torch.empty_like(grad).normal_(0.0, std, generator=generator)
            noisy.append(noise.add_(grad))
        return noisy

    def _draw_plan(
        self, group: dict[str, Any], params: list[Tensor], generator: torch.Generator
    ) -> _TwoPointPlan | _DensePlan | None:
        """This step's multipliers for one bucket; None when every multiplier is 1."""
        rebel_frac = group["rebel_frac"]
        perturbation = PERTURBATIONS[group["perturbation"]]
        if group["mask"] == "fixed":
            return self._fixed_plan(params, rebel_frac, perturbation, generator)
        if rebel_frac == 0.0:
            return None
        if perturbation.rebel_value is None:
            return _DensePlan(
                [
                    perturbation.multiplier(
                        param.shape,
                        rebel_frac,
                        generator=generator,
                        dtype=param.dtype,
                        device=param.device,
                    )
                    for param in params
                ]
            )

        # One draw for the whole bucket, in the flat index space of its concatenated tensors:
        # the per-draw overhead is paid once, not once per (often tiny) tensor. For p > 0.5
        # the obedient elements are drawn instead, so the draw stays small.
        rebel_value = perturbation.rebel_value
        numels = [param.numel() for param in params]
        complement = rebel_frac > 0.5
        prob = 1.0 - rebel_frac if complement else rebel_frac
        if prob == 0.0:
            pieces = []
        else:
            device = params[0].device
            positions = _bernoulli_positions(
                sum(numels), prob, generator=generator, device=device, workspace=self._workspace
            )
            pieces = _split_positions(positions, numels, self._workspace.ends(numels, device))
        if not complement:
            size = pieces[-1][3] if pieces else 0
            return _TwoPointPlan(rebel_value, pieces, size, [])
        obedient: list[Tensor | None] = [None] * len(params)
        for i, index, _, _ in pieces:
            obedient[i] = index
        return _TwoPointPlan(rebel_value, [], 0, list(enumerate(obedient)))

    def _fixed_plan(
        self,
        params: list[Tensor],
        rebel_frac: float,
        perturbation: Perturbation,
        generator: torch.Generator,
    ) -> _TwoPointPlan | _DensePlan:
        for param in params:
            state = self.state[param]
            if any(key in state for key in ("rebel_index", "non_rebel_index", "rebel_multiplier")):
                continue
            # This parameter's first step: draw its mask once, with today's rebel_frac.
            if perturbation.rebel_value is None:
                state["rebel_multiplier"] = perturbation.multiplier(
                    param.shape,
                    rebel_frac,
                    generator=generator,
                    dtype=param.dtype,
                    device=param.device,
                )
            elif rebel_frac <= 0.5:
                state["rebel_index"] = rebel_positions(
                    param.numel(), rebel_frac, generator=generator, device=param.device
                )
            else:
                state["non_rebel_index"] = rebel_positions(
                    param.numel(), 1.0 - rebel_frac, generator=generator, device=param.device
                )

        states = [self.state[param] for param in params]
        if perturbation.rebel_value is None:
            if not all("rebel_multiplier" in state for state in states):
                raise ValueError(
                    "Invalid perturbation: the fixed masks of this group were drawn for a "
                    "two-point perturbation ('sign' or 'zero'); they cannot become 'gaussian'"
                )
            return _DensePlan([state["rebel_multiplier"] for state in states])
        if any("rebel_multiplier" in state for state in states):
            raise ValueError(
                "Invalid perturbation: the fixed masks of this group were drawn for 'gaussian'; "
                "they cannot become a two-point perturbation"
            )
        sparse, dense, size = [], [], 0
        for i, state in enumerate(states):
            if "non_rebel_index" in state:
                obedient = state["non_rebel_index"]
                dense.append((i, obedient if obedient.numel() else None))
            elif state["rebel_index"].numel():
                count = state["rebel_index"].numel()
                sparse.append((i, state["rebel_index"], size, size + count))
                size += count
        return _TwoPointPlan(perturbation.rebel_value, sparse, size, dense)


# ---------------------------------------------------------------------------------------------
# Annealing rebel_frac


def rebel_frac_at(
    step: int, start: float, end: float, total_steps: int, shape: str = "linear"
) -> float:
    """rebel_frac after ``step`` scheduler steps: from ``start`` at 0 to ``end`` at total_steps.

    With s = min(step, T) and T = total_steps:
    linear: start + (end - start) * s / T;
    cosine: start + (end - start) * (1 - cos(pi * s / T)) / 2.
    Exactly ``start`` at step 0 and exactly ``end`` from step T on.
    """
    _check_schedule(start, end, total_steps, shape)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"Invalid step: {step!r}; expected an int >= 0")
    if step >= total_steps:
        return float(end)
    fraction = step / total_steps
    if shape == "cosine":
        fraction = (1.0 - math.cos(math.pi * fraction)) / 2.0
    return start + (end - start) * fraction


def _check_schedule(start: float, end: float, total_steps: int, shape: str) -> None:
    _check_range("start", start, 0.0, 1.0)
    _check_range("end", end, 0.0, 1.0)
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(f"Invalid total_steps: {total_steps!r}; expected an int >= 1")
    _check_choice("shape", shape, SCHEDULE_SHAPES)


class RebelFracScheduler:
    """Anneal every group's rebel_frac from ``start`` to ``end`` over ``total_steps`` steps.

    Used like torch's learning-rate schedulers: construction sets rebel_frac to ``start``; call
    :meth:`step` after ``optimizer.step()``. After ``total_steps`` calls rebel_frac stays at
    ``end``. The values are :func:`rebel_frac_at`. Fixed masks are not redrawn when rebel_frac
    changes (see :class:`RebelAdamW`).

    Args:
        optimizer (Optimizer): an optimizer whose param groups have a "rebel_frac" entry.
        start (float): rebel_frac at step 0, in [0, 1].
        end (float): rebel_frac from step total_steps on, in [0, 1].
        total_steps (int): number of :meth:`step` calls to go from start to end (>= 1).
        shape (str, optional): "linear" or "cosine" (default: "linear").
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start: float,
        end: float,
        total_steps: int,
        *,
        shape: str = "linear",
    ) -> None:
        _check_schedule(start, end, total_steps, shape)
        for number, group in enumerate(optimizer.param_groups):
            if "rebel_frac" not in group:
                raise ValueError(
                    f"Invalid optimizer: param_groups[{number}] has no 'rebel_frac' "
                    f"({type(optimizer).__name__}); use RebelAdamW"
                )
        self.optimizer = optimizer
        self.start = start
        self.end = end
        self.total_steps = total_steps
        self.shape = shape
        self.step_count = 0
        self._apply()

    def get_rebel_frac(self) -> float:
        """The rebel_frac the scheduler sets at its current step."""
        return rebel_frac_at(self.step_count, self.start, self.end, self.total_steps, self.shape)

    def _apply(self) -> None:
        rebel_frac = self.get_rebel_frac()
        for group in self.optimizer.param_groups:
            group["rebel_frac"] = rebel_frac

    def step(self) -> None:
        """Advance one step and set every group's rebel_frac."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "total_steps": self.total_steps,
            "shape": self.shape,
            "step_count": self.step_count,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a schedule saved by :meth:`state_dict` and set rebel_frac accordingly."""
        _check_schedule(
            state_dict["start"], state_dict["end"], state_dict["total_steps"], state_dict["shape"]
        )
        self.start = state_dict["start"]
        self.end = state_dict["end"]
        self.total_steps = state_dict["total_steps"]
        self.shape = state_dict["shape"]
        self.step_count = state_dict["step_count"]
        self._apply()
