"""Build the lab notebook: execute each chapter with papermill, then render it with Jupyter Book.

    python -m rebel.book build --profile quick        # what `make book PROFILE=quick` runs
    python -m rebel.book run v2_tinycnn -- -p epochs 30

A chapter's parameters live in its notebook's ``parameters`` cell and nowhere else; a profile
(``book/profiles.yml``) is a set of overrides passed to papermill. Executed notebooks go to
``executed/`` (the pages ``_toc.yml`` lists); chapter sources in ``book/`` stay output-free.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "book"
EXECUTED = ROOT / "executed"
PROFILES_FILE = SOURCES / "profiles.yml"

# Parameters that say where things go rather than what is computed: changing them does not
# make a run "non-default".
PLACEMENT_PARAMETERS = {"results_dir", "data_dir", "force", "replace_default"}


def chapters() -> list[str]:
    """The executed chapters, in the order ``_toc.yml`` lists them."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = []
    for entry in _toc_files(toc):
        path = Path(entry)
        if path.parts[0] == EXECUTED.name:
            names.append(path.stem)
    return names


def _toc_files(node: Any) -> list[str]:
    found = []
    if isinstance(node, dict):
        if "file" in node:
            found.append(node["file"])
        for value in node.values():
            found.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_toc_files(item))
    return found


def source_notebook(chapter: str) -> Path:
    path = SOURCES / f"{chapter}.ipynb"
    if not path.is_file():
        known = ", ".join(chapters())
        raise ValueError(f"no chapter {chapter!r} (looked for {path}); chapters: {known}")
    return path


def notebook_defaults(chapter: str) -> dict[str, Any]:
    """The values assigned in a chapter's ``parameters`` cell, read from its source."""
    notebook = json.loads(source_notebook(chapter).read_text())
    for cell in notebook["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            defaults = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    defaults[node.targets[0].id] = ast.literal_eval(node.value)
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    defaults[node.target.id] = ast.literal_eval(node.value)
            return defaults
    raise ValueError(f"{chapter}: its notebook has no cell tagged 'parameters'")


def parameters(chapter: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """This execution's parameter values, picked from a notebook's namespace by name."""
    return {name: namespace[name] for name in notebook_defaults(chapter)}


def chapter_output(chapter: str, params: dict[str, Any]) -> Path:
    """Where a chapter writes its metrics parquet.

    The default results (``<results_dir>/<chapter>.parquet``) are written only by a run with
    the chapter's default parameters, or by one that asks with ``replace_default=True`` or
    points ``results_dir`` elsewhere. Any other rerun writes beside them, under ``reruns/``,
    in a file named by a hash of its parameters, so reruns never overwrite the default.
    """
    defaults = notebook_defaults(chapter)
    results_dir = Path(params["results_dir"])
    changed = sorted(
        name
        for name, value in params.items()
        if name not in PLACEMENT_PARAMETERS and value != defaults.get(name)
    )
    in_default_dir = results_dir == Path(defaults["results_dir"])
    if changed and in_default_dir and not params.get("replace_default", False):
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        path = results_dir / "reruns" / f"{chapter}-{digest}.parquet"
        print(
            f"Parameters differ from the chapter's defaults ({', '.join(changed)}): "
            f"this rerun's metrics go to {path}, not to the default results."
        )
        return path
    return results_dir / f"{chapter}.parquet"


def profile_parameters(profile: str, chapter: str) -> dict[str, Any]:
    """The papermill overrides a profile applies to one chapter."""
    profiles = yaml.safe_load(PROFILES_FILE.read_text())
    if profile not in profiles:
        raise ValueError(
            f"unknown profile {profile!r}; choose one of: {', '.join(profiles)} "
            f"(defined in {PROFILES_FILE.relative_to(ROOT)})"
        )
    sections = profiles[profile] or {}
    merged = dict(sections.get("all") or {})
    merged.update(sections.get(chapter) or {})
    # "all" may name parameters that some chapters (the TL;DR, say) do not have.
    declared = notebook_defaults(chapter)
    return {name: value for name, value in merged.items() if name in declared}


def execute(chapter: str, params: dict[str, Any], output: Path) -> None:
    """Execute one chapter with papermill, showing progress on the terminal."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(source_notebook(chapter)),
        str(output),
        parameters=params,
        cwd=str(ROOT),
        log_output=True,
        progress_bar=True,
        kernel_name="python3",
    )


def render() -> None:
    """Render the executed notebooks to ``_build/html`` with warnings as errors."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(ROOT), "-W", "-n", "--keep-going"]
    subprocess.run(command, check=True, cwd=ROOT)


def build(profile: str) -> int:
    import papermill

    for chapter in chapters():
        params = profile_parameters(profile, chapter)
        print(f"== {chapter} (profile {profile}) ==", flush=True)
        try:
            execute(chapter, params, EXECUTED / f"{chapter}.ipynb")
        except papermill.PapermillExecutionError as error:
            # Stored runs are kept; rerunning the build resumes from them.
            print(
                f"\nChapter {chapter} stopped: {error.ename}: {error.evalue}\n"
                f"The executed notebook is {EXECUTED / (chapter + '.ipynb')}. Runs already "
                f"finished are stored and will be reused when the build is rerun.",
                file=sys.stderr,
            )
            return 1
    render()
    print(f"The report: {ROOT / '_build' / 'html' / 'index.html'}")
    return 0


def rerun(chapter: str, name: str, papermill_args: list[str]) -> int:
    """Rerun one chapter through papermill's own command line, with the reader's arguments."""
    source_notebook(chapter)
    name = name or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = EXECUTED / "reruns" / f"{chapter}-{name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "papermill",
        str(source_notebook(chapter)),
        str(output),
        "--cwd",
        str(ROOT),
        "--log-output",
        *papermill_args,
    ]
    result = subprocess.run(command, cwd=ROOT)
    print(f"Executed notebook: {output}")
    return result.returncode


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our own arguments, and papermill's: everything after the first ``--``."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rebel.book",
        description=__doc__.split("\n")[0],
        epilog="papermill's options go after --, e.g. run v2_tinycnn -- -p epochs 30",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="execute every chapter, render the HTML")
    build_parser.add_argument("--profile", default="full", help="full, quick or smoke")
    run_parser = commands.add_parser(
        "run", help="rerun one chapter with new parameters: run CHAPTER [--name N] -- -p ..."
    )
    run_parser.add_argument("chapter", help="e.g. v2_tinycnn")
    run_parser.add_argument("--name", default="", help="name of the rerun (default: a time)")
    ours, papermill_args = split_arguments(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(ours)
    if args.command == "build":
        if papermill_args:
            parser.error(f"build takes no papermill arguments, got {papermill_args}")
        return build(args.profile)
    return rerun(args.chapter, args.name, papermill_args)


if __name__ == "__main__":
    sys.exit(main())
