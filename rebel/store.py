"""Results store: one parquet file per finished run, keyed by a hash of its configuration.

Every file carries, in its parquet metadata, what produced its numbers: the full run
configuration, library versions, the device, the dataset's checksum and source, and the wall
time. Writes are atomic (a temporary file in the same folder, then a rename), so an interrupted
sweep leaves either a complete file or none, and a rerun picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# Bump when the engine changes what a stored number means (metrics, data pipeline, defaults
# hidden from the config). Old files then no longer match any key and are recomputed.
ENGINE_VERSION = 1

METADATA_KEY = b"rebel"


def config_key(config: Any) -> str:
    """A short, stable hash of a run configuration (a dataclass) and the engine version."""
    fields = dataclasses.asdict(config)
    payload = json.dumps(
        {"engine_version": ENGINE_VERSION, "config": fields}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ResultStore:
    """A folder of run results: ``<root>/runs/<key>.parquet``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def path(self, config: Any) -> Path:
        return self.runs_dir / f"{config_key(config)}.parquet"

    def has(self, config: Any) -> bool:
        return self.path(config).is_file()

    def save(self, config: Any, frame: pd.DataFrame, metadata: dict[str, Any]) -> Path:
        """Write ``frame`` with ``metadata`` atomically; returns the file's path."""
        path = self.path(config)
        write_parquet(path, frame, metadata)
        return path

    def load(self, config: Any) -> pd.DataFrame:
        return read_run(self.path(config))


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame, metadata: dict[str, Any]) -> None:
    """Write ``frame`` to ``path`` with ``metadata`` (JSON) in the file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    merged = dict(table.schema.metadata or {})
    merged[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(merged)
    # A temporary file in the same folder, then a rename: readers see all of it or nothing.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_run(path: str | os.PathLike) -> pd.DataFrame:
    """Read one run's rows; its provenance is in ``frame.attrs["rebel"]``."""
    table = pq.read_table(path)
    frame = table.to_pandas()
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    frame.attrs["rebel"] = json.loads(raw) if raw else {}
    return frame


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance stored with one run, without reading its rows."""
    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
