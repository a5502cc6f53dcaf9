"""The lab notebook: chapter sources, profiles, papermill runs and the Jupyter Book build.

The end-to-end tests execute every chapter with the smoke profile (synthetic data, made up for
tests only) into a temporary folder and build the book from those outputs with -W.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rebel import book
from rebel.store import read_run

ROOT = book.ROOT


def test_every_chapter_in_the_toc_has_a_source_with_a_parameters_cell():
    names = book.chapters()
    assert names[:4] == ["v1_random_mask", "v2_tinycnn", "v3_fixed_mask", "v4_cifar10"]
    assert names[-1] == "tldr"
    for name in names:
        defaults = book.notebook_defaults(name)
        assert defaults["results_dir"] == "results"


def test_notebook_sources_carry_no_outputs():
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name} has outputs"
                assert cell["execution_count"] is None, f"{path.name} has execution counts"


def test_defaults_reproduce_the_log_protocol():
    v2 = book.notebook_defaults("v2_tinycnn")
    assert v2["rebel_fracs"] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert v2["epochs"] == 20 and v2["model"] == "TinyCNN" and v2["dataset"] == "mnist"
    assert v2["thresholds"] == [0.97, 0.975, 0.98, 0.985]
    v4 = book.notebook_defaults("v4_cifar10")
    assert v4["rebel_fracs"] == [0.0, 0.05] and v4["augment"] is True
    assert book.notebook_defaults("v3_fixed_mask")["rebel_fracs"] == v2["rebel_fracs"]


def test_profiles_override_only_declared_parameters():
    smoke = book.profile_parameters("smoke", "v4_cifar10")
    assert smoke["dataset"] == "synthetic-cifar10"
    assert smoke["results_dir"] == "results/smoke"
    assert "epochs" not in book.profile_parameters("smoke", "tldr")
    assert book.profile_parameters("full", "v2_tinycnn") == {}
    with pytest.raises(ValueError, match="'huge'"):
        book.profile_parameters("huge", "v2_tinycnn")


def test_a_rerun_with_new_parameters_does_not_replace_the_default_results():
    defaults = book.notebook_defaults("v2_tinycnn")
    assert book.chapter_output("v2_tinycnn", defaults) == Path("results/v2_tinycnn.parquet")
    changed = dict(defaults, epochs=30)
    rerun_path = book.chapter_output("v2_tinycnn", changed)
    assert rerun_path.parent == Path("results/reruns")
    assert rerun_path != book.chapter_output("v2_tinycnn", dict(defaults, epochs=31))
    asked = dict(changed, replace_default=True)
    assert book.chapter_output("v2_tinycnn", asked) == Path("results/v2_tinycnn.parquet")
    elsewhere = dict(changed, results_dir="results/mine")
    assert book.chapter_output("v2_tinycnn", elsewhere) == Path("results/mine/v2_tinycnn.parquet")


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Every chapter executed with the smoke profile, results and notebooks in a tmp folder."""
    tmp = tmp_path_factory.mktemp("book")
    results = tmp / "results"
    for name in book.chapters():
        params = book.profile_parameters("smoke", name)
        params["results_dir"] = str(results)
        book.execute(name, params, tmp / "executed" / f"{name}.ipynb")
    return tmp


def test_every_chapter_writes_its_parquet(smoke_book):
    for name in book.chapters():
        if name == "tldr":
            continue
        frame = read_run(smoke_book / "results" / f"{name}.parquet")
        assert frame.attrs["rebel"]["chapter"] == name
        assert frame["dataset"].str.startswith("synthetic-").all()
        assert set(frame["seed"]) == {0, 1}


def test_the_book_builds_with_warnings_as_errors_and_shows_figures(smoke_book):
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, smoke_book / name)
    shutil.copytree(ROOT / "book", smoke_book / "book", ignore=shutil.ignore_patterns("*.ipynb"))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(jupyter_book), "build", str(smoke_book), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = smoke_book / "_build" / "html"
    assert (html / "index.html").is_file()
    for name in ("v1_random_mask", "v2_tinycnn", "v3_fixed_mask", "v4_cifar10"):
        page = (html / "executed" / f"{name}.html").read_text()
        assert page.count("<img") >= 1, f"{name} has no figure"
        assert "synthetic data" in page
        assert "supported" in page or "inconclusive" in page
    assert "Verdict" in (html / "executed" / "tldr.html").read_text()


def test_run_command_passes_only_what_follows_the_dashes_to_papermill():
    assert book.split_arguments(["run", "v2_tinycnn", "--name", "", "--"]) == (
        ["run", "v2_tinycnn", "--name", ""],
        [],
    )
    assert book.split_arguments(["run", "v2_tinycnn", "--", "-p", "epochs", "3", "--"]) == (
        ["run", "v2_tinycnn"],
        ["-p", "epochs", "3", "--"],
    )
    with pytest.raises(SystemExit):
        book.main(["run", "v2_tinycnn", "-p", "epochs", "3"])  # papermill's options need --


def test_make_run_reruns_a_chapter_with_new_parameters(tmp_path):
    # What `make run CHAPTER=... NAME=... PARAMS=...` executes, on synthetic data.
    name = f"test-{tmp_path.name}"
    command = [sys.executable, "-m", "rebel.book", "run", "v1_random_mask", "--name", name]
    command += ["--", "-p", "dataset", "synthetic-mnist", "-p", "results_dir", str(tmp_path)]
    command += ["-p", "epochs", "1", "-y", "rebel_fracs: [0.0, 0.2]", "-y", "seeds: [0]"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    executed = ROOT / "executed" / "reruns" / f"v1_random_mask-{name}.ipynb"
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert executed.is_file()
        frame = read_run(tmp_path / "v1_random_mask.parquet")
        assert sorted(frame["rebel_frac"].unique()) == [0.0, 0.2]
        assert set(frame["epoch"]) == {1} and set(frame["seed"]) == {0}
    finally:
        executed.unlink(missing_ok=True)


def test_papermill_rerun_with_changed_parameters_changes_the_chapter_parquet(smoke_book):
    results = smoke_book / "results"
    before = read_run(results / "v1_random_mask.parquet")
    out = smoke_book / "rerun.ipynb"
    command = [
        sys.executable,
        "-m",
        "papermill",
        str(ROOT / "book" / "v1_random_mask.ipynb"),
        str(out),
        "--cwd",
        str(ROOT),
        "-p",
        "dataset",
        "synthetic-mnist",
        "-p",
        "results_dir",
        str(results),
        "-p",
        "epochs",
        "2",
        "-y",
        "rebel_fracs: [0.0, 0.3]",
        "-y",
        "seeds: [0]",
    ]
    subprocess.run(command, check=True, capture_output=True)
    after = read_run(results / "v1_random_mask.parquet")
    assert sorted(after["rebel_frac"].unique()) == [0.0, 0.3]
    assert after["epoch"].max() == 2
    assert not before[["rebel_frac", "epoch"]].equals(after[["rebel_frac", "epoch"]])
    assert isinstance(after, pd.DataFrame)
