"""Reading OMOP CDM tables from files or a database: only the needed columns, in chunks.

Two backends with one interface (:class:`OmopTables`):

- :class:`FileTables`: one file per table in a folder, ``NAME.csv``, ``.csv.gz`` or
  ``.parquet``, the name in any case (Athena's vocabulary files, tab-separated and
  unquoted, are recognised by their header);
- :class:`DatabaseTables`: any SQLAlchemy URL (PostgreSQL first, via psycopg; SQLite and
  DuckDB files work the same), tables in ``schema``. Rows are streamed
  (server-side cursors) ``chunk_rows`` at a time; a filter on ids is sent as ``IN``
  lists of at most 5,000 ids.

Column names are matched in any case and returned lower-case. Values come back as the
source stores them (text from CSV; dates, times and numbers from Parquet and databases);
the reader normalises ids with :func:`ids`.
"""

from __future__ import annotations

import gzip
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from leader.data.tables import find_table
from leader.errors import LeaderError
from leader.optional import require

CHUNK_ROWS = 200_000  # rows per database fetch
IN_LIST = 5_000  # ids per IN (...) list
Where = tuple[str, Collection[str]] | None  # (column, allowed ids)


def ids(values: pd.Series) -> pd.Series:
    """Ids as text: ``17`` / ``17.0`` / ``' 17 '`` -> ``'17'``; missing stays missing."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return pd.to_numeric(values, errors="coerce").round().astype("Int64").astype("string")
    text = values.astype("string").str.strip()
    dotted = text.str.contains(".", regex=False).fillna(False).astype(bool)
    if dotted.any():  # '17.0' from a float export: only those rows pay for the pattern
        text[dotted] = text[dotted].str.replace(r"^(-?\d+)\.0*$", r"\1", regex=True)
    return text.mask(text == "")


class OmopTables:
    """The tables of one CDM instance."""

    description: str = ""
    inputs: list[Path]

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def read(
        self,
        name: str,
        required: Sequence[str],
        optional: Sequence[str] = (),
        where: Where = None,
    ) -> pd.DataFrame:
        """``required`` + present ``optional`` columns (lower-case) of rows passing ``where``."""
        raise NotImplementedError

    def _pick(
        self, name: str, header: list[str], required: Sequence[str], optional: Sequence[str]
    ) -> list[tuple[str, str]]:
        lower = {c.lower(): c for c in header}
        missing = [c for c in required if c.lower() not in lower]
        if missing:
            raise LeaderError(
                f"{self.description}: table {name}: column '{missing[0]}' missing "
                f"(found: {', '.join(header) or 'nothing'})"
            )
        wanted = [c.lower() for c in [*required, *optional] if c.lower() in lower]
        return [(c, lower[c]) for c in dict.fromkeys(wanted)]


class FileTables(OmopTables):
    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise LeaderError(f"{folder}: folder not found")
        self.folder = folder
        self.description = str(folder)
        self.inputs = []

    def has(self, name: str) -> bool:
        try:
            find_table(self.folder, name)
            return True
        except LeaderError:
            return False

    def read(
        self,
        name: str,
        required: Sequence[str],
        optional: Sequence[str] = (),
        where: Where = None,
    ) -> pd.DataFrame:
        path = find_table(self.folder, name)
        if path not in self.inputs:
            self.inputs.append(path)
        if path.name.lower().endswith(".parquet"):
            header = list(pq.read_schema(path).names)
            columns = self._pick(name, header, required, optional)
            batches = pq.ParquetFile(path).iter_batches(
                batch_size=CHUNK_ROWS, columns=[original for _, original in columns]
            )
        else:
            header, delimiter = _csv_header(path)
            columns = self._pick(name, header, required, optional)
            batches = _csv_batches(path, [original for _, original in columns], delimiter)
        kept = [_filter(batch, columns, where) for batch in _checked(path, batches)]
        schema = kept[0].schema if kept else None
        table = pa.Table.from_batches(kept, schema=schema) if kept else None
        lower = [c for c, _ in columns]
        if table is None:
            return pd.DataFrame({c: pd.Series(dtype="string") for c in lower})
        frame = table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
        frame.columns = lower
        return frame


def _csv_header(path: Path) -> tuple[list[str], str]:
    """The header and the delimiter (tab for Athena's vocabulary files, else comma)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
            first = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise LeaderError(f"{path}: cannot be read as CSV ({exc})") from exc
    delimiter = "\t" if "\t" in first and "," not in first else ","
    names = [c.strip().strip('"') for c in first.rstrip("\r\n").split(delimiter)]
    return [n for n in names if n], delimiter


def _csv_batches(path: Path, columns: list[str], delimiter: str) -> Iterator[pa.RecordBatch]:
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=16 << 20),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, quote_char=False if delimiter == "\t" else '"'
        ),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.string() for c in columns},
            strings_can_be_null=True,
        ),
    )
    yield from reader


def _checked(path: Path, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    try:
        yield from batches
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LeaderError(f"{path}: cannot be read ({message})") from exc


def _filter(batch: pa.RecordBatch, columns: list[tuple[str, str]], where: Where) -> pa.RecordBatch:
    if where is None:
        return batch
    column, allowed = where
    original = dict(columns)[column]
    values = batch.column(original)
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    keep = pc.is_in(pc.utf8_trim_whitespace(values), value_set=pa.array(sorted(allowed)))
    return batch.filter(pc.fill_null(keep, False))


class DatabaseTables(OmopTables):
    """Tables of a database, through SQLAlchemy (``pip install 'leader[omop]'``)."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        require("sqlalchemy", "omop", "prepare omop --db")
        import sqlalchemy as sa

        self._sa = sa
        try:
            self.engine = sa.create_engine(url)
        except (sa.exc.NoSuchModuleError, ImportError) as exc:
            raise LeaderError(
                f"--db {url.split(':', 1)[0]}: no SQLAlchemy driver for this database "
                f"({_first(exc)}); for PostgreSQL: pip install 'leader[omop]' and a "
                "postgresql+psycopg:// URL"
            ) from exc
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise LeaderError(
                f"--db: not a database URL ({exc}); e.g. postgresql+psycopg://user@host/db"
            ) from exc
        shown = self.engine.url.render_as_string(hide_password=True)
        self.description = shown + (f" schema {schema}" if schema else "")
        self.schema = schema
        self.inputs = []
        try:
            inspector = sa.inspect(self.engine)
            self._tables = {t.lower(): t for t in inspector.get_table_names(schema=schema)}
            self._tables.update({v.lower(): v for v in inspector.get_view_names(schema=schema)})
        except sa.exc.SQLAlchemyError as exc:
            raise LeaderError(
                f"{self.description}: cannot read the database ({_first(exc)})"
            ) from exc

    def has(self, name: str) -> bool:
        return name.lower() in self._tables

    def read(
        self,
        name: str,
        required: Sequence[str],
        optional: Sequence[str] = (),
        where: Where = None,
    ) -> pd.DataFrame:
        sa = self._sa
        if not self.has(name):
            found = ", ".join(sorted(self._tables)[:8]) or "no tables"
            raise LeaderError(
                f"{self.description}: table {name} not found (found: {found}); "
                "name the schema holding the CDM tables with --schema"
            )
        real = self._tables[name.lower()]
        header = [c["name"] for c in sa.inspect(self.engine).get_columns(real, schema=self.schema)]
        columns = self._pick(name, header, required, optional)
        table = sa.table(real, *[sa.column(o) for _, o in columns], schema=self.schema)
        select = sa.select(*[table.c[o] for _, o in columns])
        statements: list[Any] = [select]
        if where is not None:
            column, allowed = where
            target = table.c[dict(columns)[column]]
            values = sorted(allowed)
            typed: list[Any] = (
                [int(v) for v in values] if all(v.lstrip("-").isdigit() for v in values) else values
            )
            statements = [
                select.where(target.in_(typed[i : i + IN_LIST]))
                for i in range(0, len(typed), IN_LIST)
            ]
        frames = []
        try:
            with self.engine.connect() as connection:
                streaming = connection.execution_options(stream_results=True)
                for statement in statements:
                    result = streaming.execute(statement)
                    while rows := result.fetchmany(CHUNK_ROWS):
                        frames.append(pd.DataFrame(rows, columns=[c for c, _ in columns]))
        except sa.exc.SQLAlchemyError as exc:
            raise LeaderError(
                f"{self.description}: reading table {name} failed ({_first(exc)})"
            ) from exc
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype="string") for c, _ in columns})
        return pd.concat(frames, ignore_index=True)


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
