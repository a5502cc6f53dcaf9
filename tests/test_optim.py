"""Tests of rebel.optim: RebelAdamW against torch's AdamW and a slow, obvious float64 step."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import rebel.optim as optim
from rebel.optim import (
    PERTURBATIONS,
    RebelAdamW,
    RebelFracScheduler,
    gaussian_multiplier,
    gradient_noise_std,
    rebel_frac_at,
    rebel_positions,
    sign_multiplier,
    zero_multiplier,
)

LR = 0.1  # large, so that a step's change stands well above float64 rounding of theta
BETAS = (0.9, 0.999)
EPS = 1e-8
WD = 0.05


@pytest.fixture(autouse=True, params=["fused", "foreach"])
def core(request, monkeypatch):
    """Every test runs with each AdamW core as the default (fused=None picks the fused one on
    the CPU); tests that pass ``fused`` themselves are unaffected."""
    defaults = dict(RebelAdamW.__init__.__kwdefaults__)
    defaults["fused"] = None if request.param == "fused" else False
    monkeypatch.setattr(RebelAdamW.__init__, "__kwdefaults__", defaults)
    return request.param


def make_params(*shapes, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes
    ]


def make_grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def reference_step(param, grad, state, *, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD):
    """AdamW's change to ``param`` and its new moments, written out in float64."""
    beta1, beta2 = betas
    step = (int(state["step"]) if state else 0) + 1
    exp_avg = state["exp_avg"] if state else torch.zeros_like(param)
    exp_avg_sq = state["exp_avg_sq"] if state else torch.zeros_like(param)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    exp_avg_hat = exp_avg / (1 - beta1**step)
    exp_avg_sq_hat = exp_avg_sq / (1 - beta2**step)
    delta = -lr * weight_decay * param - lr * exp_avg_hat / (exp_avg_sq_hat.sqrt() + eps)
    return delta, exp_avg, exp_avg_sq


def step_multipliers(optimizer, params, grads, **hyper):
    """Do one step; return per parameter m = (theta_new - theta_old) / (AdamW's change)."""
    snapshots = []
    for param, grad in zip(params, grads, strict=True):
        state = {k: v.clone() for k, v in optimizer.state[param].items() if torch.is_tensor(v)}
        snapshots.append((param.detach().clone(), state))
        param.grad = grad.clone()
    optimizer.step()
    multipliers = []
    for param, grad, (before, state) in zip(params, grads, snapshots, strict=True):
        delta, _, _ = reference_step(before, grad, state, **hyper)
        multipliers.append((param.detach() - before) / delta)
    return multipliers


def assert_in(values, allowed, atol=1e-9):
    """Every value is within atol of one of ``allowed``; return the nearest allowed values."""
    allowed = torch.tensor(allowed, dtype=values.dtype)
    distance, nearest = (values.reshape(-1, 1) - allowed).abs().min(dim=1)
    assert distance.max().item() < atol, f"max distance {distance.max().item():.3g}"
    return allowed[nearest].reshape(values.shape)


def within_binomial(count, trials, prob, sds=5.0):
    sd = math.sqrt(trials * prob * (1 - prob))
    return abs(count - trials * prob) <= sds * sd + 1e-9


# ---------------------------------------------------------------------------------------------
# rebel_frac = 0 is AdamW


def _groups(params):
    return [
        {"params": params[:2]},
        {"params": params[2:4], "lr": 0.03, "weight_decay": 0.0},
        {"params": params[4:], "lr": 0.2, "weight_decay": 0.3, "betas": (0.8, 0.99)},
    ]


# (RebelAdamW's fused option, torch AdamW's implementation, bit for bit?)
IMPLEMENTATIONS = [
    (False, dict(foreach=True), True),
    (True, dict(fused=True), True),
    (None, dict(fused=True), True),  # the default on the CPU is torch's fused kernel
    (False, dict(foreach=False), False),
    (True, dict(foreach=False), False),
]


@pytest.mark.parametrize(("fused", "torch_impl", "bitwise"), IMPLEMENTATIONS)
def test_rebel_frac_zero_matches_torch_adamw(fused, torch_impl, bitwise):
    shapes = [(5, 4), (7,), (3, 2, 3, 3), (), (11, 2), (6,)]
    params = make_params(*shapes)
    reference = [p.detach().clone().requires_grad_() for p in params]
    rebel = RebelAdamW(
        _groups(params), lr=LR, weight_decay=WD, rebel_frac=0.0, seed=1, fused=fused
    )
    adamw = torch.optim.AdamW(_groups(reference), lr=LR, weight_decay=WD, **torch_impl)
    for step in range(50):
        grads = make_grads(params, seed=100 + step)
        for ps in (params, reference):
            for i, (p, g) in enumerate(zip(ps, grads, strict=True)):
                # params[1] never gets a gradient; params[4] only every third step
                p.grad = None if i == 1 or (i == 4 and step % 3) else g.clone()
        rebel.step()
        adamw.step()
    for p, q in zip(params, reference, strict=True):
        assert_close = torch.equal if bitwise else _close_1e12
        assert assert_close(p.detach(), q.detach())
        if q in adamw.state:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert assert_close(rebel.state[p][key], adamw.state[q][key]), key
        else:
            assert p not in rebel.state or len(rebel.state[p]) == 0
    assert float(rebel.state[params[4]]["step"]) == 17
    assert float(rebel.state[params[0]]["step"]) == 50


def _close_1e12(a, b):
    return torch.allclose(a, b, rtol=0, atol=1e-12 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize(
    ("fused", "torch_impl"), [(False, {"foreach": True}), (None, {"fused": True})]
)
def test_rebel_frac_zero_matches_torch_adamw_float32_and_mixed_dtypes(fused, torch_impl):
    params = make_params((40, 30), (30,), dtype=torch.float32) + make_params((9,), seed=3)
    reference = [p.detach().clone().requires_grad_() for p in params]
    rebel = RebelAdamW(params, lr=1e-3, seed=0, fused=fused)
    adamw = torch.optim.AdamW(reference, lr=1e-3, **torch_impl)
    for step in range(5):
        grads = make_grads(params, seed=step)
        for ps in (params, reference):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
        rebel.step()
        adamw.step()
    assert all(torch.equal(p, q) for p, q in zip(params, reference, strict=True))


# ---------------------------------------------------------------------------------------------
# flip="update"


@pytest.mark.parametrize("rebel_frac", [0.0, 0.05, 0.3, 0.5, 0.7, 1.0])
def test_flip_update_negates_whole_change_of_rebels(rebel_frac):
    params = make_params((1000, 1000), (17,), (3, 5), ())
    optimizer = RebelAdamW(
        params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, rebel_frac=rebel_frac, seed=7
    )
    grads = make_grads(params, seed=1)
    multipliers = torch.cat([m.reshape(-1) for m in step_multipliers(optimizer, params, grads)])

    # Each change is AdamW's change (m = 1) or exactly its negation (m = -1).
    signs = assert_in(multipliers, [-1.0, 1.0], atol=1e-9)
    rebels = int((signs < 0).sum())
    assert within_binomial(rebels, multipliers.numel(), rebel_frac)
    if rebel_frac in (0.0, 1.0):
        assert rebels == rebel_frac * multipliers.numel()

    # The moments see the true gradient: exactly AdamW's.
    for param, grad in zip(params, grads, strict=True):
        _, exp_avg, exp_avg_sq = reference_step(param, grad, {})
        assert torch.equal(optimizer.state[param]["exp_avg"], exp_avg)
        assert torch.allclose(optimizer.state[param]["exp_avg_sq"], exp_avg_sq, rtol=1e-15)


def test_flip_update_over_several_steps_keeps_adamw_moments():
    params = make_params((50, 40))
    reference = [p.detach().clone().requires_grad_() for p in params]
    rebel = RebelAdamW(params, lr=LR, rebel_frac=0.3, seed=3)
    adamw = torch.optim.AdamW(reference, lr=LR, foreach=True)
    for step in range(10):
        grads = make_grads(params, seed=step)
        for ps in (params, reference):
            ps[0].grad = grads[0].clone()
        rebel.step()
        adamw.step()
    assert not torch.equal(params[0], reference[0])
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(rebel.state[params[0]][key], adamw.state[reference[0]][key])


def test_flip_update_without_the_folded_path_agrees():
    # lr * weight_decay = 1 cannot fold the flip into the step and takes the gather path.
    params = make_params((300, 200))
    optimizer = RebelAdamW(params, lr=1.0, weight_decay=1.0, rebel_frac=0.2, seed=0)
    grads = make_grads(params, seed=0)
    (multipliers,) = step_multipliers(optimizer, params, grads, lr=1.0, weight_decay=1.0)
    signs = assert_in(multipliers[multipliers.isfinite()], [-1.0, 1.0])
    assert within_binomial(int((signs < 0).sum()), signs.numel(), 0.2)


def test_flip_update_leaves_grad_alone():
    params = make_params((100, 30))
    grads = make_grads(params, seed=0)
    optimizer = RebelAdamW(params, rebel_frac=0.4, seed=0)
    params[0].grad = grads[0].clone()
    grad_object = params[0].grad
    optimizer.step()
    assert params[0].grad is grad_object
    assert torch.equal(params[0].grad, grads[0])


# ---------------------------------------------------------------------------------------------
# flip="grad"


@pytest.mark.parametrize("rebel_frac", [0.2, 0.8])
@pytest.mark.parametrize("perturbation", ["sign", "zero"])
def test_flip_grad_multiplies_gradient_before_the_moments(rebel_frac, perturbation):
    params = make_params((400, 250), (9,))
    grads = make_grads(params, seed=5)
    optimizer = RebelAdamW(
        params, lr=LR, weight_decay=WD, rebel_frac=rebel_frac, flip="grad",
        perturbation=perturbation, seed=2,
    )  # fmt: skip
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    grad_objects = [p.grad for p in params]
    before = [p.detach().clone() for p in params]
    optimizer.step()

    rebel_value = PERTURBATIONS[perturbation].rebel_value
    rebels, total = 0, 0
    for param, grad, old, grad_object in zip(params, grads, before, grad_objects, strict=True):
        # p.grad is the same tensor, holding the true gradient.
        assert param.grad is grad_object and torch.equal(param.grad, grad)
        # exp_avg = (1 - beta1) * m * g on the first step reveals m.
        state = optimizer.state[param]
        multiplier = assert_in(state["exp_avg"] / ((1 - BETAS[0]) * grad), [rebel_value, 1.0])
        rebels += int((multiplier != 1).sum())
        total += multiplier.numel()
        # Moments and step are plain AdamW on the multiplied gradient.
        delta, exp_avg, exp_avg_sq = reference_step(old, multiplier * grad, {})
        assert torch.allclose(state["exp_avg"], exp_avg, rtol=0, atol=1e-15)
        assert torch.allclose(state["exp_avg_sq"], exp_avg_sq, rtol=0, atol=1e-15)
        assert torch.allclose(param.detach(), old + delta, rtol=0, atol=1e-13)
    assert within_binomial(rebels, total, rebel_frac)


def test_flip_grad_with_noise_leaves_grad_alone():
    params = make_params((60, 60))
    grads = make_grads(params, seed=0)
    optimizer = RebelAdamW(params, rebel_frac=0.3, flip="grad", grad_noise=0.5, seed=0)
    params[0].grad = grads[0].clone()
    optimizer.step()
    assert torch.equal(params[0].grad, grads[0])


# ---------------------------------------------------------------------------------------------
# The sampler


def test_rebel_positions_are_sorted_distinct_and_in_range():
    generator = torch.Generator().manual_seed(0)
    for numel, frac in [(0, 0.3), (1, 1.0), (10, 0.0), (1000, 0.01), (1000, 0.5), (997, 0.9)]:
        positions = rebel_positions(numel, frac, generator=generator)
        assert positions.dtype == torch.int64
        assert bool((positions[1:] > positions[:-1]).all())
        assert positions.numel() == 0 or (0 <= positions.min() and positions.max() < numel)
    assert rebel_positions(50, 1.0, generator=generator).tolist() == list(range(50))


@pytest.mark.parametrize("force_top_ups", [False, True])
@pytest.mark.parametrize("rebel_frac", [0.03, 0.3, 0.8])
def test_rebel_positions_are_exactly_bernoulli(monkeypatch, force_top_ups, rebel_frac):
    if force_top_ups:
        # Draw far too few gaps each time, so that nearly every draw needs top-ups.
        monkeypatch.setattr(optim, "_GAP_MARGIN_SD", -3.0)
        monkeypatch.setattr(optim, "_GAP_MARGIN_MIN", 1)
    generator = torch.Generator().manual_seed(11)
    numel, draws = 64, 1500 if force_top_ups else 4000
    hits = torch.zeros(numel)
    counts = []
    for _ in range(draws):
        positions = rebel_positions(numel, rebel_frac, generator=generator)
        hits[positions] += 1
        counts.append(positions.numel())

    # Every position, first and last included, is a rebel with probability rebel_frac.
    sd = math.sqrt(draws * rebel_frac * (1 - rebel_frac))
    z = (hits - draws * rebel_frac) / sd
    assert z.abs().max() < 4.5
    # Counts have the Binomial(numel, p) mean and variance.
    counts = torch.tensor(counts, dtype=torch.float64)
    mean, var = numel * rebel_frac, numel * rebel_frac * (1 - rebel_frac)
    assert abs(counts.mean() - mean) < 5 * math.sqrt(var / draws)
    assert abs(counts.var() / var - 1) < 5 * math.sqrt(2 / draws)


def test_gaps_between_rebels_are_geometric():
    generator = torch.Generator().manual_seed(3)
    numel, frac = 2_000_000, 0.05
    gaps = rebel_positions(numel, frac, generator=generator).diff().double()
    # P(gap = k) = (1 - p)^(k - 1) p for k = 1, 2, 3 and the mean 1 / p
    for k in (1, 2, 3):
        expected = (1 - frac) ** (k - 1) * frac
        assert within_binomial(int((gaps == k).sum()), gaps.numel(), expected)
    sd = math.sqrt((1 - frac) / frac**2 / gaps.numel())
    assert abs(gaps.mean().item() - 1 / frac) < 5 * sd


def test_multiplier_functions_have_the_stated_moments():
    generator = torch.Generator().manual_seed(0)
    n, p = 400_000, 0.2
    cases = [
        (sign_multiplier, 1 - 2 * p, 4 * p * (1 - p)),
        (gaussian_multiplier, 1 - 2 * p, 4 * p * (1 - p)),
        (zero_multiplier, 1 - p, p * (1 - p)),
    ]
    for function, mean, var in cases:
        m = function((n,), p, generator=generator, dtype=torch.float64)
        assert abs(m.mean().item() - mean) < 5 * math.sqrt(var / n)
        assert abs(m.var().item() / var - 1) < 0.02
    assert set(sign_multiplier((1000,), p, generator=generator).unique().tolist()) == {-1, 1}
    assert set(zero_multiplier((1000,), p, generator=generator).unique().tolist()) == {0, 1}


# ---------------------------------------------------------------------------------------------
# Masks, seeds and state


def _rebels(optimizer, params, seed):
    """The rebels of one step, as a bool tensor per parameter (flip="update", sign)."""
    multipliers = step_multipliers(optimizer, params, make_grads(params, seed))
    return [assert_in(m, [-1.0, 1.0]) < 0 for m in multipliers]


def same_masks(first, second):
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_fixed_mask_is_kept_across_steps_and_state_dict():
    params = make_params((80, 50), (13,))
    optimizer = RebelAdamW(params, lr=LR, weight_decay=WD, rebel_frac=0.3, mask="fixed")
    first = _rebels(optimizer, params, seed=0)
    assert 0 < sum(int(r.sum()) for r in first) < sum(r.numel() for r in first)
    for seed in (1, 2):
        assert same_masks(first, _rebels(optimizer, params, seed))

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = RebelAdamW(params, lr=LR, weight_decay=WD, rebel_frac=0.3, mask="fixed", seed=99)
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.state[params[0]]["rebel_index"].dtype == torch.int64
    assert same_masks(first, _rebels(fresh, params, seed=3))
    # A later change of rebel_frac keeps the mask as drawn.
    fresh.param_groups[0]["rebel_frac"] = 0.9
    assert same_masks(first, _rebels(fresh, params, seed=4))


def test_fixed_mask_above_one_half_stores_the_obedient_elements():
    params = make_params((60, 70))
    optimizer = RebelAdamW(params, lr=LR, weight_decay=WD, rebel_frac=0.8, mask="fixed")
    (first,) = _rebels(optimizer, params, seed=0)
    assert within_binomial(int(first.sum()), first.numel(), 0.8)
    assert "non_rebel_index" in optimizer.state[params[0]]
    assert torch.equal(first, _rebels(optimizer, params, seed=1)[0])


def test_resampled_masks_differ_between_steps():
    params = make_params((80, 50))
    optimizer = RebelAdamW(params, lr=LR, weight_decay=WD, rebel_frac=0.3, seed=0)
    first, second = (_rebels(optimizer, params, seed)[0] for seed in (0, 1))
    # Independent masks: the overlap is about p^2 of the elements, far from p.
    overlap = int((first & second).sum())
    assert within_binomial(overlap, first.numel(), 0.3**2)


def _train(optimizer, params, steps, first_seed=0):
    for step in range(first_seed, first_seed + steps):
        for p, g in zip(params, make_grads(params, seed=step), strict=True):
            p.grad = g
        optimizer.step()


@pytest.mark.parametrize("grad_noise", [0.0, 0.1])
def test_resumed_run_is_bitwise_the_uninterrupted_run(grad_noise):
    def build(params):
        return RebelAdamW(params, lr=1e-2, rebel_frac=0.2, grad_noise=grad_noise, seed=5)

    straight = make_params((30, 20), (7,))
    _train(build(straight), straight, steps=10)

    resumed = make_params((30, 20), (7,))
    optimizer = build(resumed)
    _train(optimizer, resumed, steps=4)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in resumed], "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    restarted = [p.clone().requires_grad_() for p in saved["params"]]
    optimizer = RebelAdamW(restarted, lr=1e-2, rebel_frac=0.2, grad_noise=grad_noise, seed=1)
    optimizer.load_state_dict(saved["optim"])
    _train(optimizer, restarted, steps=6, first_seed=4)
    assert all(torch.equal(a, b) for a, b in zip(straight, restarted, strict=True))


def test_deepcopy_keeps_the_generator_state():
    params = make_params((30, 20))
    optimizer = RebelAdamW(params, lr=1e-2, rebel_frac=0.3, seed=0)
    _train(optimizer, params, steps=2)
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    twin = RebelAdamW(twin_params, lr=1e-2, rebel_frac=0.3, seed=0)
    twin.load_state_dict(copy.deepcopy(optimizer).state_dict())
    _train(optimizer, params, steps=3, first_seed=2)
    _train(twin, twin_params, steps=3, first_seed=2)
    assert torch.equal(params[0], twin_params[0])


def test_seeds_and_the_global_rng():
    def rebels(seed, global_seed=0):
        torch.manual_seed(global_seed)
        params = make_params((60, 50))
        optimizer = RebelAdamW(params, lr=LR, weight_decay=WD, rebel_frac=0.3, seed=seed)
        state = torch.get_rng_state()
        mask = _rebels(optimizer, params, seed=0)[0]
        assert torch.equal(state, torch.get_rng_state()), "step() drew from the global RNG"
        return mask, optimizer.seed

    assert torch.equal(rebels(1)[0], rebels(1)[0])
    assert not torch.equal(rebels(1)[0], rebels(2)[0])
    # seed=None: read from torch.initial_seed(), so the global seed decides.
    assert rebels(None, global_seed=4)[1] == 4
    assert torch.equal(rebels(None, global_seed=4)[0], rebels(None, global_seed=4)[0])
    assert not torch.equal(rebels(None, global_seed=4)[0], rebels(None, global_seed=5)[0])

    torch.manual_seed(0)
    state = torch.get_rng_state()
    RebelAdamW(make_params((3,)), rebel_frac=0.5)
    assert torch.equal(state, torch.get_rng_state()), "construction drew from the global RNG"


def test_state_dict_from_torch_adamw_loads():
    params = make_params((20, 10))
    adamw = torch.optim.AdamW(params, lr=1e-2)
    _train(adamw, params, steps=2)
    optimizer = RebelAdamW(params, lr=1e-2, rebel_frac=0.25, seed=0)
    optimizer.load_state_dict(adamw.state_dict())
    assert optimizer.param_groups[0]["rebel_frac"] == 0.25
    assert float(optimizer.state[params[0]]["step"]) == 2
    _train(optimizer, params, steps=1)
    assert float(optimizer.state[params[0]]["step"]) == 3


# ---------------------------------------------------------------------------------------------
# The other perturbations and gradient noise


@pytest.mark.parametrize(
    ("perturbation", "mean", "var"),
    [("gaussian", lambda p: 1 - 2 * p, lambda p: 4 * p * (1 - p)), ("zero", lambda p: 1 - p,
     lambda p: p * (1 - p))],
)  # fmt: skip
@pytest.mark.parametrize("mask", ["resample", "fixed"])
def test_perturbation_multipliers_have_the_stated_moments(perturbation, mean, var, mask):
    p = 0.3
    params = make_params((400, 500))
    optimizer = RebelAdamW(
        params, lr=LR, weight_decay=WD, rebel_frac=p, perturbation=perturbation, mask=mask,
        seed=0,
    )  # fmt: skip
    (m,) = step_multipliers(optimizer, params, make_grads(params, seed=0))
    n = m.numel()
    assert abs(m.mean().item() - mean(p)) < 5 * math.sqrt(var(p) / n)
    assert abs(m.var().item() / var(p) - 1) < 0.02
    if perturbation == "zero":
        assert_in(m, [0.0, 1.0])


def test_grad_noise_has_the_annealed_variance():
    eta, decay = 0.5, 0.55
    params = make_params((300, 300))
    optimizer = RebelAdamW(
        params, lr=1e-12, grad_noise=eta, grad_noise_decay=decay, seed=0, weight_decay=0.0
    )
    exp_avgs = []
    for _ in range(2):
        params[0].grad = torch.zeros_like(params[0])
        optimizer.step()
        exp_avgs.append(optimizer.state[params[0]]["exp_avg"].clone())
        assert torch.equal(params[0].grad, torch.zeros_like(params[0]))
    # exp_avg_1 = (1 - b1) noise_1; exp_avg_2 = b1 exp_avg_1 + (1 - b1) noise_2
    noise_1 = exp_avgs[0] / (1 - BETAS[0])
    noise_2 = (exp_avgs[1] - BETAS[0] * exp_avgs[0]) / (1 - BETAS[0])
    n = noise_1.numel()
    for noise, earlier in ((noise_1, 0), (noise_2, 1)):
        expected = eta / (1 + earlier) ** decay
        assert gradient_noise_std(earlier, eta, decay) ** 2 == pytest.approx(expected)
        assert abs(noise.var().item() / expected - 1) < 5 * math.sqrt(2 / n)
        assert abs(noise.mean().item()) < 5 * math.sqrt(expected / n)


# ---------------------------------------------------------------------------------------------
# Shapes, layouts and groups


@pytest.mark.parametrize("flip", ["update", "grad"])
def test_parameters_of_any_shape_and_layout(flip):
    scalar = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    vector, conv = make_params((31,), (8, 3, 5, 5))
    channels_last = conv.detach().to(memory_format=torch.channels_last).requires_grad_()
    transposed = make_params((40, 30))[0].detach().t().requires_grad_()
    params = [scalar, vector, conv, channels_last, transposed]
    assert not transposed.is_contiguous() and not channels_last.is_contiguous()
    grads = [g.contiguous() for g in make_grads(params, seed=4)]
    grads[4] = grads[4].t().contiguous().t()  # a non-contiguous gradient as well
    optimizer = RebelAdamW(params, lr=LR, weight_decay=WD, rebel_frac=0.5, flip=flip, seed=0)
    if flip == "update":
        multipliers = step_multipliers(optimizer, params, grads)
        signs = assert_in(torch.cat([m.reshape(-1) for m in multipliers]), [-1.0, 1.0])
        assert within_binomial(int((signs < 0).sum()), signs.numel(), 0.5)
    else:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        for p, g in zip(params, grads, strict=True):
            assert torch.equal(p.grad, g)
            m = optimizer.state[p]["exp_avg"] / ((1 - BETAS[0]) * g)
            assert_in(m, [-1.0, 1.0])
    for p in params:
        assert p.shape == optimizer.state[p]["exp_avg"].shape


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "same"])
def test_any_layouts_step_correctly_with_the_fused_core(layout, grad_layout):
    # torch's fused CPU kernel is silently wrong when a parameter and its gradient have
    # different strides (torch 2.14); RebelAdamW must notice and take the foreach sequence.
    if layout == "transposed":
        param = make_params((40, 30))[0].detach().t()
    else:
        param = make_params((8, 3, 5, 5))[0].detach().to(memory_format=torch.channels_last)
    param.requires_grad_()
    reference = param.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    grad = make_grads([reference], seed=2)[0].contiguous()
    if grad_layout == "same":
        grad = torch.empty_like(param).copy_(grad)
    assert (param.stride() == grad.stride()) == (grad_layout == "same")
    rebel = RebelAdamW([param], lr=LR, weight_decay=WD, fused=True)
    adamw = torch.optim.AdamW([reference], lr=LR, weight_decay=WD, foreach=False)
    for _ in range(3):
        param.grad = grad.clone(memory_format=torch.preserve_format)
        reference.grad = grad.clone(memory_format=torch.preserve_format)
        rebel.step()
        adamw.step()
    assert _close_1e12(param.detach(), reference.detach())


def test_fused_true_refuses_non_cpu_parameters():
    param = torch.zeros(3, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="Invalid fused: True, but parameters are on meta"):
        RebelAdamW([param], fused=True)
    with pytest.raises(ValueError, match="Invalid fused: True, but parameters are on cuda:0"):
        optim._use_fused(True, torch.device("cuda:0"))  # parameters moved after construction
    assert not optim._use_fused(None, torch.device("cuda:0"))
    with pytest.raises(ValueError, match="Invalid fused: 'yes'"):
        RebelAdamW([torch.zeros(3, requires_grad=True)], fused="yes")


def test_per_group_rebel_frac(core):
    obedient, rebellious = make_params((100, 40)), make_params((100, 40), seed=1)
    reference = [p.detach().clone().requires_grad_() for p in obedient]
    optimizer = RebelAdamW(
        [{"params": obedient, "rebel_frac": 0.0}, {"params": rebellious, "rebel_frac": 0.5}],
        lr=LR,
        seed=0,
    )
    adamw = torch.optim.AdamW(reference, lr=LR, **{core: True})
    for step in range(5):
        grads = make_grads(obedient, seed=step)
        obedient[0].grad, reference[0].grad = grads[0].clone(), grads[0].clone()
        rebellious[0].grad = grads[0].clone()
        optimizer.step()
        adamw.step()
    assert torch.equal(obedient[0], reference[0])
    assert not torch.equal(rebellious[0], reference[0])


def test_closure_returns_the_loss():
    params = make_params((3,))
    optimizer = RebelAdamW(params, rebel_frac=0.5, seed=0)

    def closure():
        optimizer.zero_grad()
        loss = (params[0] ** 2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == pytest.approx((params[0] ** 2).sum().item(), 0.1)


# ---------------------------------------------------------------------------------------------
# The scheduler


def test_scheduler_values():
    assert rebel_frac_at(0, 0.4, 0.1, 10) == 0.4
    assert rebel_frac_at(5, 0.4, 0.1, 10) == pytest.approx(0.25, abs=1e-15)
    assert rebel_frac_at(10, 0.4, 0.1, 10) == 0.1
    assert rebel_frac_at(25, 0.4, 0.1, 10) == 0.1
    assert rebel_frac_at(0, 0.4, 0.1, 10, "cosine") == 0.4
    assert rebel_frac_at(5, 0.4, 0.1, 10, "cosine") == pytest.approx(0.25, abs=1e-15)
    quarter = 0.4 + (0.1 - 0.4) * (1 - math.cos(math.pi / 4)) / 2
    assert rebel_frac_at(25, 0.4, 0.1, 100, "cosine") == pytest.approx(quarter, abs=1e-15)
    assert rebel_frac_at(100, 0.4, 0.1, 100, "cosine") == 0.1


def test_scheduler_sets_every_group_and_round_trips():
    params = make_params((3,), (4,))
    optimizer = RebelAdamW([{"params": params[:1]}, {"params": params[1:]}], rebel_frac=0.9)
    scheduler = RebelFracScheduler(optimizer, 0.5, 0.0, 4, shape="linear")
    seen = [[g["rebel_frac"] for g in optimizer.param_groups]]
    for _ in range(6):
        scheduler.step()
        seen.append([g["rebel_frac"] for g in optimizer.param_groups])
    assert seen == [[v, v] for v in (0.5, 0.375, 0.25, 0.125, 0.0, 0.0, 0.0)]

    scheduler_state = scheduler.state_dict()
    other = RebelFracScheduler(optimizer, 0.2, 0.2, 1, shape="cosine")
    other.load_state_dict(scheduler_state)
    assert other.state_dict() == scheduler_state
    assert other.get_rebel_frac() == 0.0 and optimizer.param_groups[1]["rebel_frac"] == 0.0


# ---------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"lr": -1.0}, "-1.0"),
        ({"lr": torch.tensor(0.1)}, "Tensor lr"),
        ({"eps": -1e-8}, "-1e-08"),
        ({"betas": (1.0, 0.999)}, "1.0"),
        ({"betas": (0.9, -0.1)}, "-0.1"),
        ({"betas": (0.9,)}, "(0.9,)"),
        ({"weight_decay": -0.5}, "-0.5"),
        ({"rebel_frac": 1.5}, "1.5"),
        ({"rebel_frac": -0.1}, "-0.1"),
        ({"rebel_frac": float("nan")}, "nan"),
        ({"mask": "sometimes"}, "'sometimes'"),
        ({"flip": "both"}, "'both'"),
        ({"perturbation": "uniform"}, "'uniform'"),
        ({"grad_noise": -0.1}, "-0.1"),
        ({"grad_noise_decay": -1.0}, "-1.0"),
        ({"seed": 1.5}, "1.5"),
    ],
)
def test_bad_arguments_raise_value_error_with_the_value(kwargs, shown):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name if name != "betas" else "beta") as error:
        RebelAdamW(make_params((3,)), **kwargs)
    assert shown in str(error.value)


def test_bad_choices_list_the_valid_ones():
    with pytest.raises(ValueError, match="'resample', 'fixed'"):
        RebelAdamW(make_params((3,)), mask="always")
    with pytest.raises(ValueError, match="'flip'") as error:
        RebelAdamW(make_params((3,)), perturbation="flip")
    assert all(repr(name) in str(error.value) for name in PERTURBATIONS)


def test_bad_group_values_are_caught_when_added_and_at_step():
    params = make_params((3,), (4,))
    optimizer = RebelAdamW(params[:1], rebel_frac=0.1)
    with pytest.raises(ValueError, match=r"rebel_frac in param group 1: 2\.0"):
        optimizer.add_param_group({"params": params[1:], "rebel_frac": 2.0})
    assert len(optimizer.param_groups) == 1
    params[0].grad = torch.ones_like(params[0])
    optimizer.param_groups[0]["rebel_frac"] = -0.25  # as a buggy scheduler might
    with pytest.raises(ValueError, match=r"rebel_frac in param_groups\[0\]: -0\.25"):
        optimizer.step()
    with pytest.raises(ValueError, match="complex"):
        RebelAdamW([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])


def test_bad_scheduler_and_sampler_arguments():
    optimizer = RebelAdamW(make_params((3,)))
    for args, kwargs, shown in [
        ((1.2, 0.0, 10), {}, "start: 1.2"),
        ((0.1, -0.1, 10), {}, "end: -0.1"),
        ((0.1, 0.0, 0), {}, "total_steps: 0"),
        ((0.1, 0.0, 2.5), {}, "total_steps: 2.5"),
        ((0.1, 0.0, 10), {"shape": "step"}, "shape: 'step'"),
    ]:
        with pytest.raises(ValueError, match=shown):
            RebelFracScheduler(optimizer, *args, **kwargs)
    with pytest.raises(ValueError, match="no 'rebel_frac'"):
        RebelFracScheduler(torch.optim.AdamW(make_params((3,))), 0.1, 0.0, 10)
    with pytest.raises(ValueError, match="step: -1"):
        rebel_frac_at(-1, 0.1, 0.0, 10)
    generator = torch.Generator()
    with pytest.raises(ValueError, match="numel: -5"):
        rebel_positions(-5, 0.1, generator=generator)
    with pytest.raises(ValueError, match="rebel_frac: 3"):
        rebel_positions(5, 3, generator=generator)


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_parameters_use_a_cuda_generator():
    params = [p.detach().cuda().requires_grad_() for p in make_params((300, 200), (50,))]
    optimizer = RebelAdamW(params, lr=LR, weight_decay=WD, rebel_frac=0.3, seed=0)
    grads = [g.cuda() for g in make_grads(params, seed=0)]
    multipliers = step_multipliers(optimizer, params, grads)
    signs = assert_in(torch.cat([m.reshape(-1) for m in multipliers]).cpu(), [-1.0, 1.0])
    assert within_binomial(int((signs < 0).sum()), signs.numel(), 0.3)
    assert "cuda:0" in optimizer.state_dict()["rebel_rng"]["generator_states"]


def test_scale_perturbation_is_adamw_at_the_scaled_learning_rate():
    torch.manual_seed(3)
    start = [torch.randn(7, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(20)]
    p = 0.3
    scaled = [t.clone().requires_grad_() for t in start]
    reference = [t.clone().requires_grad_() for t in start]
    rebel = RebelAdamW(scaled, lr=1e-2, weight_decay=0.1, rebel_frac=p, perturbation="scale")
    adamw = torch.optim.AdamW(reference, lr=1e-2 * (1 - 2 * p), weight_decay=0.1)
    for step_grads in grads:
        for tensors, optimizer in ((scaled, rebel), (reference, adamw)):
            for tensor, grad in zip(tensors, step_grads, strict=True):
                tensor.grad = grad.clone()
            optimizer.step()
    for ours, theirs in zip(scaled, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
