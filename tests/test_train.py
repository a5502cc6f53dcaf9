"""The training engine and the results store, on synthetic data (made up for tests only)."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

import rebel.train as train_module
from rebel import RunConfig, run, sweep
from rebel.store import ResultStore, config_key, read_metadata

METRIC_COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc"]


def tiny(**changes) -> RunConfig:
    base = RunConfig(dataset="synthetic-mnist", model="TinyCNN", epochs=2, device="cpu")
    return base.replace(**changes)


def test_config_rejects_bad_values_with_the_value_in_the_message():
    with pytest.raises(ValueError, match="'imagenet'"):
        RunConfig(dataset="imagenet")
    with pytest.raises(ValueError, match="'ResNet'"):
        RunConfig(model="ResNet")
    with pytest.raises(ValueError, match="epochs.*0"):
        RunConfig(epochs=0)
    with pytest.raises(ValueError, match="1.5"):
        RunConfig(rebel_frac=1.5)
    with pytest.raises(ValueError, match="sometimes"):
        RunConfig(mask="sometimes")
    with pytest.raises(ValueError, match="train_subset.*-3"):
        RunConfig(train_subset=-3)


def test_run_returns_one_row_per_epoch_with_config_and_metrics():
    config = tiny(epochs=3, rebel_frac=0.1)
    frame = run(config, results_dir=None, log=None)
    assert list(frame["epoch"]) == [1, 2, 3]
    assert (frame["rebel_frac"] == 0.1).all() and (frame["model"] == "TinyCNN").all()
    for column in ("train_acc", "test_acc"):
        assert frame[column].between(0, 1).all()
    assert (frame["status"] == "ok").all()
    # Synthetic classes are separable: three epochs beat chance (10 %) by far.
    assert frame["test_acc"].iloc[-1] > 0.5
    assert frame["run_key"].nunique() == 1 and frame["run_key"].iloc[0] == config_key(config)


def test_same_config_gives_identical_rows_on_cpu():
    config = tiny(rebel_frac=0.2)
    first = run(config, results_dir=None, log=None)
    second = run(config, results_dir=None, log=None)
    pd.testing.assert_frame_equal(first[METRIC_COLUMNS], second[METRIC_COLUMNS])


def test_other_seed_gives_other_rows():
    first = run(tiny(seed=0), results_dir=None, log=None)
    second = run(tiny(seed=1), results_dir=None, log=None)
    assert not first[METRIC_COLUMNS].equals(second[METRIC_COLUMNS])


def test_one_log_line_per_epoch():
    lines = []
    run(tiny(epochs=3), results_dir=None, log=lines.append)
    assert len(lines) == 3
    assert "epoch 3/3" in lines[-1] and "test" in lines[-1]


def test_stored_run_has_provenance_and_is_reused(tmp_path, monkeypatch):
    config = tiny()
    frame = run(config, results_dir=tmp_path, log=None)
    path = ResultStore(tmp_path).path(config)
    assert path.is_file() and path.parent == tmp_path / "runs"
    meta = read_metadata(path)
    assert meta["config"]["rebel_frac"] == config.rebel_frac
    assert meta["device"] == "cpu"
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    assert meta["dataset"]["synthetic"] is True
    assert len(meta["dataset"]["checksum"]) == 64
    assert meta["wall_seconds"] > 0

    calls = []
    real_train = train_module._train

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train", counting_train)
    loaded = run(config, results_dir=tmp_path, log=None)
    assert calls == []
    pd.testing.assert_frame_equal(loaded[METRIC_COLUMNS], frame[METRIC_COLUMNS])
    run(config, results_dir=tmp_path, force=True, log=None)
    assert calls == [1]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import rebel.store as store_module

    def broken_write(table, where):
        with open(where, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store_module.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        run(tiny(epochs=1), results_dir=tmp_path, log=None)
    assert list((tmp_path / "runs").iterdir()) == []


def test_interrupted_sweep_resumes_and_loses_only_the_run_in_progress(tmp_path, monkeypatch):
    configs = [tiny(epochs=1, rebel_frac=p) for p in (0.0, 0.1, 0.2)]
    real_train = train_module._train
    trained = []

    def interrupt_second(config, **kwargs):
        if config.rebel_frac == 0.1:
            raise KeyboardInterrupt
        trained.append(config.rebel_frac)
        return real_train(config, **kwargs)

    monkeypatch.setattr(train_module, "_train", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        sweep(configs, results_dir=tmp_path, log=None)
    assert trained == [0.0]

    def record(config, **kwargs):
        trained.append(config.rebel_frac)
        return real_train(config, **kwargs)

    monkeypatch.setattr(train_module, "_train", record)
    frame = sweep(configs, results_dir=tmp_path, log=None)
    assert trained == [0.0, 0.1, 0.2]
    assert sorted(frame["rebel_frac"].unique()) == [0.0, 0.1, 0.2]


class ExplodesOnEpochTwo(nn.Module):
    """Returns finite logits for the first epoch's batches, then NaN."""

    def __init__(self, batches_before_nan: int):
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)
        self.calls = 0
        self.batches_before_nan = batches_before_nan

    def forward(self, x):
        if self.training:
            self.calls += 1
        logits = self.linear(x.flatten(1))
        if self.calls > self.batches_before_nan:
            logits = logits * math.nan
        return logits


def test_diverged_run_stops_keeps_rows_and_is_stored(tmp_path, monkeypatch):
    config = tiny(epochs=5, batch_size=64)
    batches_per_epoch = math.ceil(512 / 64)  # the synthetic set's default size
    monkeypatch.setattr(
        train_module, "build_model", lambda name: ExplodesOnEpochTwo(batches_per_epoch)
    )
    frame = run(config, results_dir=tmp_path, log=None)
    assert list(frame["status"]) == ["ok", "diverged"]
    assert math.isfinite(frame["train_loss"].iloc[0])
    assert math.isnan(frame["train_loss"].iloc[1])
    assert read_metadata(ResultStore(tmp_path).path(config))["status"] == "diverged"


def test_train_subset_uses_that_many_images(tmp_path):
    config = tiny(epochs=1, train_subset=100)
    run(config, results_dir=tmp_path, log=None)
    meta = read_metadata(ResultStore(tmp_path).path(config))
    assert meta["dataset"]["train_images"] == 100
    with pytest.raises(ValueError, match="exceeds"):
        run(tiny(train_subset=10**7), results_dir=None, log=None)


def test_augmented_cifar_run_and_annealed_fraction():
    config = RunConfig(
        dataset="synthetic-cifar10",
        model="Cifar10CNN",
        epochs=1,
        augment=True,
        rebel_frac=0.2,
        rebel_frac_end=0.0,
        device="cpu",
    )
    frame = run(config, results_dir=None, log=None)
    assert frame["status"].tolist() == ["ok"]


def test_rebel_layers_put_only_the_chosen_layers_in_the_rebel_group():
    from rebel.models import build_model

    model = build_model("TinyCNN")
    final = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    final_numel = sum(t.numel() for t in final.parameters())
    total = sum(t.numel() for t in model.parameters())
    for layers, rebel_numel in (("last", final_numel), ("all-but-last", total - final_numel)):
        groups = train_module._param_groups(tiny(rebel_frac=0.3, rebel_layers=layers), model)
        assert sum(t.numel() for t in groups[0]["params"]) == rebel_numel
        assert groups[1]["rebel_frac"] == 0.0
        optimizer = train_module._make_optimizer(tiny(rebel_frac=0.3, rebel_layers=layers), model)
        assert [g["rebel_frac"] for g in optimizer.param_groups] == [0.3, 0.0]
    with pytest.raises(ValueError, match="'middle'"):
        tiny(rebel_layers="middle")
    with pytest.raises(ValueError, match="rebel_frac_end"):
        tiny(rebel_layers="last", rebel_frac_end=0.0)
