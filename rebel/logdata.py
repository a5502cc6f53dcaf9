"""The research log's numbers, transcribed as data.

Source: the research log "Rebel AdamW Optimizer" (../shared/research-log.md), 2025-12-29,
experiments v1 to v4. Every number here is the log's, copied by hand; the tests check a few of
them against the log's text. Accuracies are fractions (99.15 % is 0.9915); a threshold the log
marks "N/A" (not reached) is ``NaN``. The log reports one value per setting and does not say
how many runs stand behind it, so the book treats each as a single run.

What the log does not state (epochs of v1, batch size, learning rate, weight decay, seeds) is
``None`` in :data:`LOG_PROTOCOL`, never a guess.

    >>> from rebel import logdata
    >>> logdata.v3_fixed_vs_random().set_index("rebel_frac").loc[0.3, "fixed_test"]
    0.3275
"""

from __future__ import annotations

import math

import pandas as pd

NOT_REACHED = math.nan

V2_THRESHOLDS = (0.97, 0.975, 0.98, 0.985)
V4_THRESHOLDS = (0.5, 0.6, 0.7, 0.75)

# Numbers the log quotes in its prose rather than in a table.
V3_FIXED_10_FIRST_EPOCH_TEST_ACC = 0.979  # "10% fixed: starts at 97.9%, ends at 96.2%"
V3_FIXED_10_LAST_EPOCH_TEST_ACC = 0.962  # the table's 96.25 %, rounded in the prose
V4_FINAL_TEST_LOSS_RANGE = (0.77, 0.81)  # "both ending around 0.77-0.81", nats
CHANCE_ACCURACY_10_CLASSES = 0.1  # MNIST and CIFAR-10 both have ten balanced classes


def _final(rows: list[tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["rebel_frac", "train_acc", "test_acc"])


def _thresholds(rows: dict[float, tuple[float, ...]], thresholds) -> pd.DataFrame:
    """Long form: one row per fraction and threshold, ``epoch`` is the first epoch reaching it.

    ``frame.pivot(index="rebel_frac", columns="threshold", values="epoch")`` gives the log's
    layout back.
    """
    return pd.DataFrame(
        [
            {"rebel_frac": frac, "threshold": threshold, "epoch": float(epoch)}
            for frac, epochs in rows.items()
            for threshold, epoch in zip(thresholds, epochs, strict=True)
        ]
    )


def v1_final() -> pd.DataFrame:
    """v1, MNIST CNN: final train and test accuracy per rebel fraction."""
    return _final(
        [
            (0.00, 0.9917, 0.9915),
            (0.05, 0.9914, 0.9909),
            (0.10, 0.9910, 0.9910),
            (0.20, 0.9916, 0.9924),
        ]
    )


def v2_final() -> pd.DataFrame:
    """v2, MNIST TinyCNN, 20 epochs: final train and test accuracy per rebel fraction."""
    return _final(
        [
            (0.00, 0.9509, 0.9887),
            (0.05, 0.9561, 0.9893),
            (0.10, 0.9570, 0.9885),
            (0.20, 0.9527, 0.9890),
            (0.30, 0.9437, 0.9875),
        ]
    )


def v2_thresholds() -> pd.DataFrame:
    """v2: first epoch reaching 97, 97.5, 98 and 98.5 % test accuracy (long form)."""
    return _thresholds(
        {
            0.00: (2, 2, 4, 7),
            0.05: (2, 2, 4, 8),
            0.10: (2, 2, 4, 7),
            0.20: (2, 3, 5, 8),
            0.30: (2, 4, 6, 12),
        },
        V2_THRESHOLDS,
    )


def v3_fixed_vs_random() -> pd.DataFrame:
    """v3: final test accuracy with the mask re-sampled each step (v2) and fixed once (v3).

    The log's "Difference" column is left out: it is ``fixed_test - random_test``, rounded.
    """
    return pd.DataFrame(
        [
            (0.00, 0.9887, 0.9887),
            (0.05, 0.9893, 0.9821),
            (0.10, 0.9885, 0.9625),
            (0.20, 0.9890, 0.9137),
            (0.30, 0.9875, 0.3275),
        ],
        columns=["rebel_frac", "random_test", "fixed_test"],
    )


def v4_final() -> pd.DataFrame:
    """v4, CIFAR-10 with augmentation, 10 epochs: final train and test accuracy."""
    return _final([(0.00, 0.6887, 0.7285), (0.05, 0.6802, 0.7255)])


def v4_thresholds() -> pd.DataFrame:
    """v4: first epoch reaching 50, 60, 70 and 75 % test accuracy (long form; NaN = "N/A")."""
    return _thresholds(
        {0.00: (2, 3, 7, NOT_REACHED), 0.05: (2, 3, 8, NOT_REACHED)},
        V4_THRESHOLDS,
    )


# What the log says about each experiment's setup. None: the log does not say.
LOG_PROTOCOL: dict[str, dict] = {
    "v1_random_mask": {
        "dataset": "mnist",
        "model": "CNN, about 1.2M parameters (architecture not given)",
        "parameters": 1_200_000,
        "rebel_fracs": (0.0, 0.05, 0.10, 0.20),
        "mask": "resample",
        "flip": "update",
        "augment": False,
        "epochs": None,
        "batch_size": None,
        "lr": None,
        "weight_decay": None,
        "seeds": None,
        "notes": "One number per setting. Epochs, batch size, learning rate and weight decay "
        "are not stated; the parameter count is given only in v2's comparison.",
    },
    "v2_tinycnn": {
        "dataset": "mnist",
        "model": "TinyCNN, about 75K parameters",
        "parameters": 75_000,
        "rebel_fracs": (0.0, 0.05, 0.10, 0.20, 0.30),
        "mask": "resample",
        "flip": "update",
        "augment": False,
        "epochs": 20,
        "batch_size": None,
        "lr": None,
        "weight_decay": None,
        "seeds": None,
        "notes": "Final train accuracy (about 95 %) is below test accuracy (about 98.9 %), "
        "which suggests dropout or another train-time-only regulariser in the model.",
    },
    "v3_fixed_mask": {
        "dataset": "mnist",
        "model": "TinyCNN, about 75K parameters (as v2)",
        "parameters": 75_000,
        "rebel_fracs": (0.0, 0.05, 0.10, 0.20, 0.30),
        "mask": "fixed",
        "flip": "update",
        "augment": False,
        "epochs": 20,
        "batch_size": None,
        "lr": None,
        "weight_decay": None,
        "seeds": None,
        "notes": "Same sweep as v2, with the rebel mask drawn once and kept. The random-mask "
        "column is v2's, not a rerun.",
    },
    "v4_cifar10": {
        "dataset": "cifar10",
        "model": "CIFAR10CNN, about 582K parameters",
        "parameters": 582_000,
        "rebel_fracs": (0.0, 0.05),
        "mask": "resample",
        "flip": "update",
        "augment": True,
        "augmentation": "random crop with padding, random horizontal flip",
        "epochs": 10,
        "batch_size": None,
        "lr": None,
        "weight_decay": None,
        "seeds": None,
        "notes": "The interpretation mentions dropout in the model.",
    },
}


# The log's claims, in our words, each with how the book checks it. `log_numbers` says what
# the log's own tables show for the claim, where that is worth a remark.
LOG_CLAIMS: list[dict[str, str]] = [
    # v1: MNIST, ~1.2M-parameter CNN, mask re-sampled each step
    {
        "id": "v1-trains-at-20",
        "chapter": "v1_random_mask",
        "claim": "Training converges normally even when 20 % of elements move against the "
        "update at every step.",
        "test": "Final train and test accuracy at p = 20 % against p = 0, paired by seed; "
        "equivalence within a stated margin.",
    },
    {
        "id": "v1-20-best",
        "chapter": "v1_random_mask",
        "claim": "p = 20 % reached the highest final test accuracy, 0.09 points above plain "
        "AdamW.",
        "test": "Paired difference 20 % - 0 % in final test accuracy over seeds (greater); "
        "the log's single-run gap against binomial test-set noise.",
        "log_numbers": "99.24 % vs 99.15 % on 10,000 images: about one binomial standard "
        "error of a single accuracy.",
    },
    {
        "id": "v1-smoother-test-loss",
        "chapter": "v1_random_mask",
        "claim": "The test-loss curve fluctuates less from epoch to epoch with rebels than "
        "without.",
        "test": "Roughness (std of epoch-to-epoch changes) of test loss per run, p > 0 "
        "minus p = 0 paired by seed (less).",
    },
    {
        "id": "v1-no-slowdown",
        "chapter": "v1_random_mask",
        "claim": "Rebels do not slow convergence: training-loss curves overlap at every p.",
        "test": "Epochs to test-accuracy thresholds and per-epoch train loss, p > 0 against "
        "p = 0; equivalence within one epoch.",
    },
    # v2: MNIST, TinyCNN (~75K parameters), 20 epochs
    {
        "id": "v2-30-too-slow",
        "chapter": "v2_tinycnn",
        "claim": "At p = 30 % the small network needs roughly twice as many epochs to reach "
        "98.5 % test accuracy as at p = 0.",
        "test": "Epochs to 98.5 % per seed at 30 % and 0 %; paired difference and ratio.",
        "log_numbers": "Epoch 12 vs epoch 7.",
    },
    {
        "id": "v2-30-worse-final",
        "chapter": "v2_tinycnn",
        "claim": "p = 30 % ends with lower final test accuracy than p = 0.",
        "test": "Paired difference 30 % - 0 % in final test accuracy (less).",
        "log_numbers": "98.75 % vs 98.87 %, a 0.12-point gap from one run each.",
    },
    {
        "id": "v2-5-sweet-spot",
        "chapter": "v2_tinycnn",
        "claim": "p = 5 % gives the best final test accuracy of the sweep at no cost in "
        "convergence speed.",
        "test": "Paired difference 5 % - 0 % in final test accuracy (greater); epochs to each "
        "threshold, equivalence within one epoch.",
        "log_numbers": "98.93 % vs 98.87 %; epoch 8 vs 7 to 98.5 %.",
    },
    {
        "id": "v2-0-10-alike",
        "chapter": "v2_tinycnn",
        "claim": "Fractions from 0 to 10 % are indistinguishable in speed and final accuracy.",
        "test": "Paired differences 5 % and 10 % against 0 % in final test accuracy and "
        "epochs to thresholds; equivalence within stated margins.",
    },
    {
        "id": "v2-20-slightly-slower",
        "chapter": "v2_tinycnn",
        "claim": "p = 20 % reaches 97.5 % and 98 % test accuracy about one epoch later than "
        "p = 0.",
        "test": "Paired difference in epochs to 97.5 % and 98 %, 20 % - 0 % (greater).",
    },
    {
        "id": "v2-train-gap",
        "chapter": "v2_tinycnn",
        "claim": "On the small network rebels cost visibly more training accuracy, widening "
        "the gap between training and test accuracy.",
        "test": "Final train accuracy and test - train gap against p, paired by seed.",
        "log_numbers": "The log's own table does not show it: train accuracy at 5 % and 10 % "
        "(95.61 %, 95.70 %) is above 0 % (95.09 %); only 30 % (94.37 %) is below.",
    },
    {
        "id": "v2-best-between-5-and-10",
        "chapter": "v2_tinycnn",
        "claim": "The best rebel fraction lies between 5 and 10 %.",
        "test": "Final test accuracy against p with intervals over seeds; whether any p beats "
        "p = 0 at all.",
    },
    # v3: fixed mask
    {
        "id": "v3-fixed-worse-with-p",
        "chapter": "v3_fixed_mask",
        "claim": "A mask drawn once and kept costs more test accuracy the larger p is.",
        "test": "Paired difference fixed - re-sampled in final test accuracy at each p; "
        "decreasing in p.",
    },
    {
        "id": "v3-30-collapses",
        "chapter": "v3_fixed_mask",
        "claim": "With 30 % of elements permanently rebelling, test accuracy collapses "
        "towards chance.",
        "test": "Final test accuracy at fixed 30 % against chance (10 %) and against the "
        "re-sampled mask.",
        "log_numbers": "32.75 %: far below the re-sampled 98.75 %, though about three times "
        "chance (10 %), so 'random guessing' overstates it.",
    },
    {
        "id": "v3-loss-rises",
        "chapter": "v3_fixed_mask",
        "claim": "With a fixed mask the training loss goes up as training proceeds.",
        "test": "Final minus minimum training loss per run with a fixed mask, by p.",
    },
    {
        "id": "v3-10-declines",
        "chapter": "v3_fixed_mask",
        "claim": "At 10 % with a fixed mask, test accuracy falls over training, from about "
        "97.9 % early on to about 96.2 % at the end.",
        "test": "Final minus first-epoch (and minus best) test accuracy per seed at fixed "
        "10 % (less).",
    },
    {
        "id": "v3-randomness-essential",
        "chapter": "v3_fixed_mask",
        "claim": "Whatever rebels do comes from re-sampling the mask, not from some weights "
        "going backwards.",
        "test": "Re-sampled against fixed mask at each p, paired by seed.",
    },
    # v4: CIFAR-10, ~582K-parameter CNN, augmentation, 10 epochs
    {
        "id": "v4-nearly-identical",
        "chapter": "v4_cifar10",
        "claim": "On CIFAR-10, 0 % and 5 % rebels end with nearly the same test accuracy.",
        "test": "Paired difference 5 % - 0 % in final test accuracy; equivalence within a "
        "stated margin.",
        "log_numbers": "72.55 % vs 72.85 %.",
    },
    {
        "id": "v4-5-slower-to-70",
        "chapter": "v4_cifar10",
        "claim": "p = 5 % reaches 70 % test accuracy one epoch after p = 0.",
        "test": "Paired difference in epochs to 70 %, 5 % - 0 % (greater).",
        "log_numbers": "Epoch 8 vs epoch 7.",
    },
    {
        "id": "v4-none-reach-75",
        "chapter": "v4_cifar10",
        "claim": "Neither setting reaches 75 % test accuracy within 10 epochs.",
        "test": "Seeds reaching 75 % within 10 epochs, per setting.",
    },
    {
        "id": "v4-0-trains-better",
        "chapter": "v4_cifar10",
        "claim": "Without rebels the network fits the training set slightly better.",
        "test": "Paired difference 5 % - 0 % in final train accuracy (less).",
        "log_numbers": "68.02 % vs 68.87 %.",
    },
    {
        "id": "v4-test-loss-similar",
        "chapter": "v4_cifar10",
        "claim": "Both settings end with similar test loss, roughly 0.77 to 0.81 nats.",
        "test": "Paired difference in final test loss; equivalence within a stated margin.",
    },
    # TL;DR
    {
        "id": "tldr-just-noise",
        "chapter": "tldr",
        "claim": "Rebels help generalisation, if at all, only as injected noise; flipping "
        "signs is a roundabout way to add it.",
        "test": "Rebels against AdamW at the matched learning rate (1 - 2p), against "
        "Gaussian update noise of the same variance and against update dropout, paired by "
        "seed; equivalence.",
    },
]
