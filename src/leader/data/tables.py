"""Reading raw EHR tables: any case of column names, .csv or .csv.gz, clear errors.

Every failure a user can fix becomes a :class:`LeaderError` naming the file, the column
and what was found, never a traceback from deep inside the CSV reader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from leader.errors import LeaderError

SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet")


def find_table(folder: Path, name: str) -> Path:
    """``folder/NAME.csv`` or ``.csv.gz`` (or parquet), the name in any case."""
    if not folder.is_dir():
        raise LeaderError(f"{folder}: folder not found")
    wanted = {f"{name}{suffix}".lower() for suffix in SUFFIXES}
    for path in sorted(folder.iterdir()):
        if path.name.lower() in wanted:
            return path
    raise LeaderError(
        f"{folder}: table {name} not found (looked for {name}.csv, {name}.csv.gz, any case)"
    )


def read_table(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
    text: Sequence[str] = (),
) -> pd.DataFrame:
    """Read ``required`` (+ present ``optional``) columns, names lower-cased.

    Columns in ``text`` are read as strings exactly as written (codes keep leading zeros).
    """
    header = _header(path)
    lower = {c.lower(): c for c in header}
    missing = [c for c in required if c.lower() not in lower]
    if missing:
        raise LeaderError(
            f"{path}: column '{missing[0]}' missing (found: {', '.join(header) or 'nothing'})"
        )
    wanted = [c for c in [*required, *optional] if c.lower() in lower]
    originals = [lower[c.lower()] for c in wanted]
    if path.name.lower().endswith(".parquet"):
        frame = pd.read_parquet(path, columns=originals)
    else:
        column_types = {lower[c.lower()]: pa.string() for c in text if c.lower() in lower}
        try:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    include_columns=originals,
                    column_types=column_types,
                    strings_can_be_null=True,
                ),
            )
        except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError) as exc:
            raise LeaderError(f"{path}: cannot be read as CSV ({_first_line(exc)})") from exc
        frame = table.to_pandas()
    frame.columns = [c.lower() for c in wanted]
    for column in text:
        if column.lower() in frame.columns:
            frame[column.lower()] = frame[column.lower()].astype("string")
    return frame


def _header(path: Path) -> list[str]:
    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16))
        names = list(reader.schema.names)
        reader.close()
        return names
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError) as exc:
        raise LeaderError(f"{path}: cannot be read as CSV ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    if "invalid UTF8" in message or "utf-8" in message.lower():
        return f"{message}; the file must be UTF-8 text"
    return message


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_columns(path: Path) -> list[str]:
    """The header of a CSV / CSV.GZ / Parquet table."""
    return _header(path)


class TableReader:
    """Reads named tables from one folder and remembers each file, for the manifest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.inputs: list[Path] = []

    def __call__(
        self,
        name: str,
        required: Sequence[str],
        optional: Sequence[str] = (),
        text: Sequence[str] = (),
    ) -> pd.DataFrame:
        path = find_table(self.folder, name)
        self.inputs.append(path)
        return read_table(path, required, optional, text)
