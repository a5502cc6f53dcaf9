"""Training engine: one frozen config in, one row per epoch out, stored with its provenance.

    >>> from rebel import RunConfig, run
    >>> frame = run(RunConfig(dataset="synthetic-mnist", model="TinyCNN", epochs=2))

The data set lives in memory as tensors on the training device; a batch is an index into it,
so no per-sample Python work happens in the loop. Metric sums stay on the device and are read
once per epoch, which keeps a GPU from waiting on the host every step.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rebel.data import DATASETS, augment_batch, load_dataset
from rebel.models import MODELS, build_model
from rebel.optim import RebelAdamW, RebelFracScheduler
from rebel.store import ENGINE_VERSION, ResultStore, config_key

METRICS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "status"]
ANNEAL_SHAPES = ("linear", "cosine")
# Which parameters may rebel: every layer, only the network's final layer (the one that
# produces the logits), or every layer but that one. The others get rebel_frac = 0.
REBEL_LAYERS = ("all", "last", "all-but-last")

# The subset of training images is drawn with this fixed seed, not the run's seed, so that
# runs with different seeds (and rebel fractions) train on the same images.
SUBSET_SEED = 0


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run. Two equal configs give equal rows on CPU.

    Optimizer settings are those of :class:`rebel.RebelAdamW`; ``rebel_frac_end`` (when set)
    anneals the rebel fraction from ``rebel_frac`` to it over all steps of the run, with the
    ``anneal`` shape. ``label`` is free text carried into the results (e.g. the name of a
    control); it is part of the key, so two labels are two runs.
    """

    # Data and model
    dataset: str = "synthetic-mnist"
    model: str = "TinyCNN"
    train_subset: int | None = None  # None: every training image
    augment: bool = False  # random crop (4 px padding) and horizontal flip, per sample

    # Schedule
    epochs: int = 1
    batch_size: int = 64
    seed: int = 0

    # Optimizer
    lr: float = 1e-3
    weight_decay: float = 1e-2
    rebel_frac: float = 0.0
    rebel_frac_end: float | None = None
    rebel_layers: str = "all"
    anneal: str = "linear"
    mask: str = "resample"
    flip: str = "update"
    perturbation: str = "sign"
    grad_noise: float = 0.0
    grad_noise_decay: float = 0.55

    # Where and how
    device: str | None = None  # None: CUDA, then Apple MPS, then the CPU
    eval_batch_size: int = 1000
    label: str = ""

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}"
            )
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.train_subset is not None and (
            not isinstance(self.train_subset, int) or self.train_subset < 1
        ):
            raise ValueError(
                f"train_subset must be None (all images) or a positive integer, "
                f"got {self.train_subset!r}"
            )
        if self.anneal not in ANNEAL_SHAPES:
            raise ValueError(f"anneal must be one of {ANNEAL_SHAPES}, got {self.anneal!r}")
        if self.rebel_frac_end is not None and not 0.0 <= self.rebel_frac_end <= 1.0:
            raise ValueError(f"rebel_frac_end must be in [0, 1], got {self.rebel_frac_end!r}")
        if self.rebel_layers not in REBEL_LAYERS:
            raise ValueError(
                f"rebel_layers must be one of {REBEL_LAYERS}, got {self.rebel_layers!r}"
            )
        if self.rebel_layers != "all" and self.rebel_frac_end is not None:
            raise ValueError(
                "annealing (rebel_frac_end) applies one fraction to every layer; it cannot be "
                f"combined with rebel_layers={self.rebel_layers!r}"
            )
        # The optimizer owns the rules for its own arguments; building one on a dummy tensor
        # checks them now rather than after the data set has loaded.
        _make_optimizer(self, nn.Linear(1, 1))

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


def resolve_device(requested: str | None) -> torch.device:
    """The device a run uses: the requested one, else the best one available."""
    if requested is not None:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _param_groups(config: RunConfig, model: nn.Module) -> list[dict]:
    """One group for all parameters, or two when only some layers rebel."""
    if config.rebel_layers == "all":
        return [{"params": list(model.parameters())}]
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    last = list(layers[-1].parameters(recurse=False))
    last_ids = {id(t) for t in last}
    rest = [t for t in model.parameters() if id(t) not in last_ids]
    rebels, calm = (last, rest) if config.rebel_layers == "last" else (rest, last)
    return [{"params": rebels}, {"params": calm, "rebel_frac": 0.0}]


def _make_optimizer(config: RunConfig, model: nn.Module) -> RebelAdamW:
    return RebelAdamW(
        _param_groups(config, model),
        lr=config.lr,
        weight_decay=config.weight_decay,
        rebel_frac=config.rebel_frac,
        mask=config.mask,
        flip=config.flip,
        perturbation=config.perturbation,
        grad_noise=config.grad_noise,
        grad_noise_decay=config.grad_noise_decay,
        seed=config.seed,
        # The foreach core, bit for bit torch's AdamW(foreach=True): the stored results were
        # made with it, and the optimizer is a small part of a training step.
        fused=False,
    )


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe(config: RunConfig) -> str:
    """A short human-readable name for a run, for log lines."""
    parts = [config.dataset, config.model, f"p={config.rebel_frac:g}"]
    if config.rebel_frac_end is not None:
        parts[-1] += f"->{config.rebel_frac_end:g}"
    if config.rebel_layers != "all":
        parts.append(f"layers={config.rebel_layers}")
    if config.mask != "resample":
        parts.append(f"mask={config.mask}")
    if config.flip != "update":
        parts.append(f"flip={config.flip}")
    if config.perturbation != "sign":
        parts.append(config.perturbation)
    if config.grad_noise:
        parts.append(f"grad_noise={config.grad_noise:g}")
    if config.label:
        parts.append(config.label)
    parts.append(f"seed={config.seed}")
    return " ".join(parts)


def run(
    config: RunConfig,
    *,
    results_dir: str | None = "results",
    data_dir: str = "data",
    force: bool = False,
    log: Callable[[str], None] | None = _stderr_log,
) -> pd.DataFrame:
    """Train ``config`` (or load its stored result) and return one row per epoch.

    Columns: every config field, ``epoch``, ``train_loss``, ``train_acc`` (running means over
    the epoch in training mode), ``test_loss``, ``test_acc`` (eval mode, whole test set),
    ``seconds`` (wall time of the epoch, evaluation included), ``status`` (``ok``, or
    ``diverged`` once the loss is non-finite: the run stops after that epoch), and ``run_key``.
    Accuracies are fractions. The provenance is in ``frame.attrs["rebel"]``.

    With ``results_dir`` set, a stored result for the same config is loaded instead of
    training (``force=True`` recomputes), and a new result is stored atomically.
    """
    store = ResultStore(results_dir) if results_dir is not None else None
    if store is not None and store.has(config) and not force:
        return store.load(config)
    frame = _train(config, data_dir=data_dir, log=log or (lambda line: None))
    if store is not None:
        store.save(config, frame, frame.attrs["rebel"])
    return frame


def sweep(
    configs: Iterable[RunConfig],
    *,
    results_dir: str | None = "results",
    data_dir: str = "data",
    force: bool = False,
    log: Callable[[str], None] | None = _stderr_log,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Run several configs in order (stored ones are loaded) and concatenate their rows.

    Each finished run is stored before the next starts, so an interrupted sweep loses at most
    the run in progress. ``progress=None`` shows a bar over the runs when stderr is a terminal.
    """
    from tqdm.auto import tqdm

    configs = list(configs)
    if progress is None:
        progress = sys.stderr.isatty()
    frames = []
    for config in tqdm(configs, desc="runs", unit="run", disable=not progress):
        frames.append(
            run(config, results_dir=results_dir, data_dir=data_dir, force=force, log=log)
        )
    if not frames:
        return pd.DataFrame(columns=[f.name for f in dataclasses.fields(RunConfig)] + METRICS)
    return pd.concat(frames, ignore_index=True)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "pandas", "pyarrow", "mnist1d", "rebel"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return device.type


# On the CPU the forward pass of evaluation runs on slices of this many images: the activations
# of a whole eval batch (1000 by default) overflow the caches, and slices of about a hundred
# images ran ~2x faster (benchmarks/RESULTS-training.md). Loss and accuracy are still reduced
# over the whole eval batch; the logits of an image came out bit for bit the same whatever the
# slice, for every model here on our CPU (a kernel whose result depended on the batch size
# would change the last bits of test_loss).
CPU_EVAL_SLICE = 128


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, channels_last: bool
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode over ``(x, y)``."""
    model.eval()
    slice_size = CPU_EVAL_SLICE if x.device.type == "cpu" else batch_size
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = y[start : start + batch_size]
        parts = []
        for part in xb.split(slice_size):
            if channels_last:
                part = part.contiguous(memory_format=torch.channels_last)
            parts.append(model(part))
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


def _uses_channels_last(x: torch.Tensor) -> bool:
    # channels_last lets oneDNN (CPU) and cuDNN pick faster convolution kernels; it exists
    # only for 4-D (image) batches.
    return x.dim() == 4


def _build_model(config: RunConfig, device: torch.device, *, channels_last: bool) -> nn.Module:
    """The run's model, initialised from ``config.seed``, on ``device``."""
    # The global seed fixes initialisation and dropout; data order and augmentation have
    # generators of their own, and the optimizer draws its masks from its own generator too.
    # Runs that differ only in optimizer settings are therefore paired.
    torch.manual_seed(config.seed)
    model = build_model(config.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _train_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    *,
    channels_last: bool,
    augment_generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch ``x[index], y[index]``, augmented when a generator is given."""
    # index_select copies whole rows; x[index] (advanced indexing) gives the same values but
    # took twice the time on the CPU (benchmarks/RESULTS-training.md).
    xb, yb = x.index_select(0, index), y.index_select(0, index)
    if augment_generator is not None:
        xb = augment_batch(xb, augment_generator)
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb, yb


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    *,
    batch_size: int,
    channels_last: bool,
    augment_generator: torch.Generator | None = None,
    scheduler: RebelFracScheduler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train once over ``x[order]`` in batches of ``batch_size`` (the last may be smaller).

    Returns the summed cross-entropy and the number of correct predictions as tensors on the
    device, not yet read, so that the loop never waits on the host. This is the whole inner
    loop of the engine; benchmarks/bench_training.py times it.
    """
    model.train()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        xb, yb = _train_batch(
            x, y, index, channels_last=channels_last, augment_generator=augment_generator
        )
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().double() * len(index)
        correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum, correct


def _train(config: RunConfig, *, data_dir: str, log: Callable[[str], None]) -> pd.DataFrame:
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, root=data_dir)

    train_x, train_y = data.train_x, data.train_y
    if config.train_subset is not None:
        if config.train_subset > len(train_x):
            raise ValueError(
                f"train_subset={config.train_subset} exceeds the {len(train_x)} training "
                f"images of {config.dataset}; use None for all of them"
            )
        chosen = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(SUBSET_SEED))
        chosen = chosen[: config.train_subset]
        train_x, train_y = train_x[chosen], train_y[chosen]
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)

    channels_last = _uses_channels_last(train_x)
    model = _build_model(config, device, channels_last=channels_last)
    # Data order and augmentation have generators of their own (see _build_model).
    order_generator = torch.Generator().manual_seed(config.seed)
    augment_generator = None
    if config.augment:
        augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1)

    optimizer = _make_optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    scheduler = None
    if config.rebel_frac_end is not None:
        scheduler = RebelFracScheduler(
            optimizer,
            config.rebel_frac,
            config.rebel_frac_end,
            config.epochs * steps_per_epoch,
            shape=config.anneal,
        )

    name = describe(config)
    rows = []
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(train_x), generator=order_generator).to(device)
        loss_sum, correct = _train_epoch(
            model,
            optimizer,
            train_x,
            train_y,
            order,
            batch_size=config.batch_size,
            channels_last=channels_last,
            augment_generator=augment_generator,
            scheduler=scheduler,
        )
        train_loss = loss_sum.item() / len(train_x)
        train_acc = correct.item() / len(train_x)
        if math.isfinite(train_loss):
            test_loss, test_acc = evaluate(
                model, test_x, test_y, config.eval_batch_size, channels_last
            )
        else:
            test_loss, test_acc = math.nan, math.nan
        status = "ok" if math.isfinite(train_loss) and math.isfinite(test_loss) else "diverged"
        seconds = time.perf_counter() - epoch_start
        rows.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds,
                "status": status,
            }
        )
        log(
            f"[{name}] epoch {epoch}/{config.epochs}  train loss {train_loss:.4f} "
            f"acc {train_acc:.2%}  test loss {test_loss:.4f} acc {test_acc:.2%}  "
            f"{seconds:.1f}s  {status}"
        )
        if status == "diverged":
            break

    key = config_key(config)
    frame = pd.DataFrame(rows)
    for field in dataclasses.fields(RunConfig):
        frame[field.name] = getattr(config, field.name)
    frame["run_key"] = key
    frame = frame[[f.name for f in dataclasses.fields(RunConfig)] + METRICS + ["run_key"]]
    frame.attrs["rebel"] = {
        "run_key": key,
        "engine_version": ENGINE_VERSION,
        "config": dataclasses.asdict(config),
        "versions": _versions(),
        "device": str(device),
        "device_name": _device_name(device),
        "platform": platform.platform(),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "checksum": data.checksum,
            "synthetic": data.synthetic,
            "train_images": len(train_x),
            "test_images": len(test_x),
        },
        "started_at": started_at,
        "wall_seconds": time.perf_counter() - started,
        "status": rows[-1]["status"],
    }
    return frame
