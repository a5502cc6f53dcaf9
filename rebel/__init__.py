"""Rebel AdamW: AdamW in which a random fraction of elements move against the update.

The package behind the lab notebook: the optimizer (:mod:`rebel.optim`), the log's models
(:mod:`rebel.models`), in-memory datasets (:mod:`rebel.data`), the training engine
(:mod:`rebel.train`), the results store (:mod:`rebel.store`), and the statistics and figures
the book draws (:mod:`rebel.analysis`, :mod:`rebel.plots`).
"""

from rebel.optim import RebelAdamW, RebelFracScheduler
from rebel.train import RunConfig, run, sweep

__all__ = ["RebelAdamW", "RebelFracScheduler", "RunConfig", "run", "sweep"]
