"""Time RebelAdamW.step() against torch.optim.AdamW(foreach=True) on real model shapes.

Claim under test: with rebel_frac=0.05, flip="update", mask="resample" and the sign
perturbation, a RebelAdamW step costs at most 1.15x a foreach AdamW step on the CPU.

Each optimizer gets its own copy of the model's parameters and a fixed random gradient. After
warmup, the configurations are timed in interleaved rounds (every round times every
configuration for ``--reps`` consecutive steps), so that load from other processes hits them
alike; the table gives the median per-step time over rounds and the median over rounds of the
per-round ratio to AdamW, with its interquartile range.

Usage:
    .venv/bin/python benchmarks/bench_optimizer.py                  # all four models, ~1 minute
    .venv/bin/python benchmarks/bench_optimizer.py --models mnist --rounds 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rebel.optim import RebelAdamW  # noqa: E402


def _inline_models() -> dict[str, Callable[[], nn.Module]]:
    """The parameter shapes of the book's networks, for when rebel.models is not importable."""

    def mnist() -> nn.Module:  # 1,199,882 parameters
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Linear(9216, 128), nn.Linear(128, 10)
        )

    def tiny() -> nn.Module:  # 74,286 parameters
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.Linear(1568, 44),
            nn.Linear(44, 10),
        )

    def cifar() -> nn.Module:  # 583,514 parameters
        channels = [3, 32, 32, 64, 64, 128, 128]
        convs = [
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(channels[:-1], channels[1:], strict=True)
        ]
        return nn.Sequential(*convs, nn.Linear(2048, 144), nn.Linear(144, 10))

    def mnist1d() -> nn.Module:  # 9,610 parameters
        return nn.Sequential(
            nn.Conv1d(1, 32, 5), nn.Conv1d(32, 32, 3), nn.Conv1d(32, 32, 3), nn.Linear(320, 10)
        )

    return {"mnist": mnist, "cifar": cifar, "tiny": tiny, "mnist1d": mnist1d}


def _models() -> tuple[dict[str, Callable[[], nn.Module]], str]:
    try:
        from rebel.models import Cifar10CNN, Mnist1DNet, MnistCNN, TinyCNN
    except ImportError:
        return _inline_models(), "inline torch.nn copies of the shapes"
    models = {"mnist": MnistCNN, "cifar": Cifar10CNN, "tiny": TinyCNN, "mnist1d": Mnist1DNet}
    return models, "rebel.models"


# (label, optimizer class, constructor keyword arguments); the first row is the baseline.
# RebelAdamW's default core on the CPU is torch's fused AdamW kernel (fused=None); the
# "fused=False" rows use the foreach sequence, bit for bit AdamW(foreach=True).
CONFIGS: list[tuple[str, type, dict]] = [
    ("torch AdamW foreach", torch.optim.AdamW, dict(foreach=True)),
    ("torch AdamW fused", torch.optim.AdamW, dict(fused=True)),
    ("rebel p=0", RebelAdamW, dict(rebel_frac=0.0)),
    ("rebel p=0.05 (target)", RebelAdamW, dict(rebel_frac=0.05)),
    ("rebel p=0.2", RebelAdamW, dict(rebel_frac=0.2)),
    ("rebel p=0.5", RebelAdamW, dict(rebel_frac=0.5)),
    ("rebel p=0.95", RebelAdamW, dict(rebel_frac=0.95)),
    ("p=0.05 flip=grad", RebelAdamW, dict(rebel_frac=0.05, flip="grad")),
    ("p=0.05 zero", RebelAdamW, dict(rebel_frac=0.05, perturbation="zero")),
    ("p=0.05 mask=fixed", RebelAdamW, dict(rebel_frac=0.05, mask="fixed")),
    ("p=0.05 gaussian", RebelAdamW, dict(rebel_frac=0.05, perturbation="gaussian")),
    ("p=0.05 scale", RebelAdamW, dict(rebel_frac=0.05, perturbation="scale")),
    ("p=0.05 grad_noise", RebelAdamW, dict(rebel_frac=0.05, grad_noise=0.01)),
    ("p=0 fused=False", RebelAdamW, dict(rebel_frac=0.0, fused=False)),
    ("p=0.05 fused=False", RebelAdamW, dict(rebel_frac=0.05, fused=False)),
]


# wall: elapsed time. cpu: CPU time of the whole process, which other processes on the machine
# disturb far less; with --threads 1 it is the work one step does (with more threads it also
# counts OpenMP workers spinning while they wait).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _optimizer(
    model_fn: Callable[[], nn.Module], kind: type, kwargs: dict
) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    params = list(model_fn().parameters())
    for param in params:
        param.grad = torch.randn_like(param)
    if kind is RebelAdamW:
        kwargs = dict(seed=0, **kwargs)
    return kind(params, lr=1e-3, **kwargs)


def _time_steps(optimizer: torch.optim.Optimizer, reps: int, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(reps):
        optimizer.step()
    return (clock() - start) / reps


def bench_model(name: str, model_fn: Callable[[], nn.Module], args: argparse.Namespace) -> None:
    optimizers = [(label, _optimizer(model_fn, kind, kwargs)) for label, kind, kwargs in CONFIGS]
    numel = sum(p.numel() for p in optimizers[0][1].param_groups[0]["params"])
    tensors = len(optimizers[0][1].param_groups[0]["params"])
    clock = CLOCKS[args.clock]
    for _, optimizer in optimizers:
        _time_steps(optimizer, args.warmup, clock)

    times: dict[str, list[float]] = {label: [] for label, _ in optimizers}
    ratios: dict[str, list[float]] = {label: [] for label, _ in optimizers}
    for _ in range(args.rounds):
        baseline = _time_steps(optimizers[0][1], args.reps, clock)
        times[optimizers[0][0]].append(baseline)
        for label, optimizer in optimizers[1:]:
            seconds = _time_steps(optimizer, args.reps, clock)
            times[label].append(seconds)
            ratios[label].append(seconds / baseline)

    print(f"\n{name}: {numel:,} parameters in {tensors} tensors")
    print(f"{'configuration':<24}{'median ms/step':>16}{'ratio':>8}{'ratio IQR':>18}")
    medians = {label: statistics.median(times[label]) for label, _ in optimizers}
    for label, _ in optimizers:
        if ratios[label]:
            quartiles = statistics.quantiles(ratios[label], n=4)
            ratio = f"{statistics.median(ratios[label]):8.3f}"
            spread = f"{quartiles[0]:8.3f} - {quartiles[2]:.3f}"
        else:
            ratio, spread = f"{1:8.3f}", ""
        print(f"{label:<24}{medians[label] * 1e3:16.3f}{ratio}{spread:>18}")

    # Where the target's extra time goes, from differences of medians: the fixed mask does the
    # same rewriting without drawing, and rebel p=0 is the AdamW part alone.
    baseline = medians["torch AdamW foreach"]
    draw = medians["rebel p=0.05 (target)"] - medians["p=0.05 mask=fixed"]
    rewrite = medians["p=0.05 mask=fixed"] - medians["rebel p=0"]
    print(
        f"target's extra time, in torch AdamW foreach steps: drawing the rebels "
        f"{draw / baseline:.3f}, rewriting them {rewrite / baseline:.3f}; our AdamW part alone "
        f"{medians['rebel p=0'] / baseline:.3f}"
    )
    fused = medians["torch AdamW fused"]
    print(
        "same core on both sides (medians): rebel p=0.05 / torch AdamW fused "
        f"{medians['rebel p=0.05 (target)'] / fused:.3f}; p=0.05 fused=False / torch AdamW "
        f"foreach {medians['p=0.05 fused=False'] / baseline:.3f}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist", "cifar", "tiny", "mnist1d"])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (default: 30)")
    parser.add_argument("--reps", type=int, default=10, help="steps per round (default: 10)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (default: 10)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="(default: wall)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    models, source = _models()
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, "
        f"threads {torch.get_num_threads()}, CPU {_cpu_model()}, {os.cpu_count()} cores, "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    print(
        f"model shapes from {source}; {args.rounds} rounds x {args.reps} steps, "
        f"{args.warmup} warmup steps, {args.clock} clock; "
        "ratio = time / torch AdamW time in the same round"
    )
    with torch.no_grad():
        for name in args.models:
            bench_model(name, models[name], args)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
