"""Loaders: generic Parquet/CSV tables described by a `DatasetSpec`, MovieLens 100K and the Amazon 5-core files.

Every loader returns a canonical `Dataset` (see `features.schema`) that has been through `validate_dataset`
with the spec's policy, so ``dataset.report`` says what was found and, under ``drop-and-report``, dropped.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.schema import (
    ITEM_ID,
    LABEL,
    QUERY,
    REQUEST_ID,
    TIMESTAMP,
    USER_ID,
    Dataset,
    LabelSpec,
    Schema,
)
from features.spec import DatasetSpec, SpecError
from features.validation import validate_dataset

logger = logging.getLogger(__name__)

_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".tsv", ".txt")


def read_table(
    path: Path,
    columns: list[str],
    *,
    table: str,
    sep: str = ",",
    encoding: str = "utf-8",
    text: tuple[str, ...] | list[str] = (),
) -> pd.DataFrame:
    """Reads the named columns of a Parquet or CSV file, failing clearly when a column or the file is missing.

    Args:
        path: A ``.parquet``/``.pq`` or ``.csv``/``.tsv``/``.txt`` file.
        columns: The columns to read, in order; duplicates are read once.
        table: The table's role (``"interactions"``, ``"items"``, ``"users"``), for messages.
        sep: CSV field separator.
        encoding: CSV text encoding.
        text: Columns a CSV file holds as text whatever they look like (ids, titles): a CSV reader would
            otherwise turn ``"007"`` into the number 7. Parquet columns keep their stored types.

    Returns:
        The columns, in the order given. Columns of the file that are not named are not read; they are counted
        and listed in an INFO log record.
    """
    wanted = list(dict.fromkeys(columns))
    if not path.is_file():
        raise FileNotFoundError(f"{table} file {path} does not exist (named by the spec's [{table}].path)")
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        try:
            available = list(pq.read_schema(path).names)
        except Exception as e:
            raise SpecError(f"{table} file {path} is not a readable Parquet file: {e}") from e
        _require_columns(available, wanted, path, table)
        return pq.read_table(path, columns=wanted).to_pandas()
    if suffix in _CSV_SUFFIXES:
        try:
            header = pd.read_csv(path, sep=sep, encoding=encoding, nrows=0)
            _require_columns(list(header.columns), wanted, path, table)
            dtype = {column: str for column in text if column in wanted}
            frame = pd.read_csv(path, sep=sep, encoding=encoding, usecols=wanted, dtype=dtype, keep_default_na=True)
            return frame[wanted]
        except UnicodeDecodeError as e:
            raise SpecError(
                f"{table} file {path} is not valid {encoding} text (byte {e.start}: {e.reason}); set `encoding` "
                f'in the spec\'s [{table}] section (e.g. encoding = "latin-1")'
            ) from e
        except LookupError as e:
            raise SpecError(
                f'`{table}.encoding` should be a text encoding Python knows (e.g. "utf-8", "latin-1"). '
                f"Received: encoding={encoding!r}"
            ) from e
        except pd.errors.EmptyDataError as e:
            raise SpecError(f"{table} file {path} is empty; expected a header row with the columns {wanted}") from e
        except pd.errors.ParserError as e:
            raise SpecError(f"{table} file {path} is not valid CSV with sep={sep!r}: {e}") from e
    raise SpecError(f"{table} file {path} has suffix {suffix!r}; expected one of {_PARQUET_SUFFIXES + _CSV_SUFFIXES}")


def _require_columns(available: list[str], wanted: list[str], path: Path, table: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise SpecError(f"{table} file {path} has no column(s) {missing} named by the spec; it has columns {available}")
    unread = [c for c in available if c not in wanted]
    if unread:
        logger.info("%s file %s: %d column(s) not named by the spec are not read: %s", table, path, len(unread), unread)


def _expand_category_path(
    items: pd.DataFrame, column: str, separator: str, levels: int
) -> tuple[pd.DataFrame, list[str]]:
    """Splits a category path ("A, B, C") into ``category_l1..category_l{levels}`` and ``category_leaf``."""
    parts = items[column].fillna("").astype(str).str.split(separator, regex=False)
    parts = parts.map(lambda p: [s.strip() for s in p if s.strip()])
    names = []
    for level in range(levels):
        name = f"category_l{level + 1}"
        items[name] = parts.map(lambda p, i=level: p[i] if len(p) > i else None)
        names.append(name)
    items["category_leaf"] = parts.map(lambda p: p[-1] if p else None)
    names.append("category_leaf")
    return items, names


def load_tables(spec: DatasetSpec) -> Dataset:
    """Loads a ``format = "tables"`` data set: Parquet or CSV files described by the spec.

    Parquet columns keep their stored types. A CSV has none: its id, categorical and text columns are read as text
    (``"007"`` stays ``"007"``), and ids and categories become int64 only when every value is a plain integer
    (``"7"``), in every table that holds the column.
    """
    if spec.interactions is None or spec.items is None:
        raise SpecError(f"dataset spec {spec.name!r} with format 'tables' needs [interactions] and [items]")
    ispec = spec.interactions
    role_columns = {
        USER_ID: ispec.user_id,
        ITEM_ID: ispec.item_id,
        TIMESTAMP: ispec.order,
    }
    if ispec.label is not None:
        role_columns[LABEL] = ispec.label
    if ispec.query is not None:
        role_columns[QUERY] = ispec.query
    if ispec.request_id is not None:
        role_columns[REQUEST_ID] = ispec.request_id
    raw = read_table(
        ispec.path,
        [*role_columns.values(), *ispec.context],
        table="interactions",
        sep=ispec.sep,
        encoding=ispec.encoding,
        text=[c for c in (ispec.user_id, ispec.item_id, ispec.query, ispec.request_id) if c is not None]
        + list(ispec.context),
    )
    interactions = pd.DataFrame({role: raw[column].to_numpy() for role, column in role_columns.items()})
    for column in ispec.context:
        interactions[column] = raw[column].to_numpy()
    if ispec.label is None:
        interactions.insert(3, LABEL, np.ones(len(interactions), dtype=np.int8))
    elif spec.label.names and not pd.api.types.is_numeric_dtype(interactions[LABEL].dtype):
        # Event names ("click") become their grades; unknown names stay as text and fail validation by name.
        by_name = {name: grade for grade, name in spec.label.names.items()}
        mapped = interactions[LABEL].map(by_name)
        interactions[LABEL] = mapped.where(mapped.notna(), interactions[LABEL])
        if mapped.notna().all():
            interactions[LABEL] = mapped.astype(np.int64)
    if ispec.query is not None:
        interactions[QUERY] = _as_text(interactions[QUERY])

    itspec = spec.items
    categorical = list(itspec.categorical)
    item_columns = [itspec.item_id, *itspec.categorical, *itspec.numeric, *itspec.text]
    if itspec.category_path is not None:
        item_columns.append(itspec.category_path)
    raw_items = read_table(
        itspec.path,
        item_columns,
        table="items",
        sep=itspec.sep,
        encoding=itspec.encoding,
        text=[c for c in item_columns if c not in itspec.numeric],
    )
    items = raw_items.rename(columns={itspec.item_id: ITEM_ID})
    if itspec.category_path is not None:
        items, levels = _expand_category_path(
            items, itspec.category_path, itspec.category_separator, itspec.category_levels
        )
        categorical = [*levels, *[c for c in categorical if c not in levels]]
    for column in itspec.text:
        items[column] = _as_text(items[column])
    items = items[[ITEM_ID, *categorical, *itspec.numeric, *itspec.text]]

    users = None
    user_categorical: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()
    if spec.users is not None:
        uspec = spec.users
        raw_users = read_table(
            uspec.path,
            [uspec.user_id, *uspec.categorical, *uspec.numeric],
            table="users",
            sep=uspec.sep,
            encoding=uspec.encoding,
            text=[uspec.user_id, *uspec.categorical],
        )
        users = raw_users.rename(columns={uspec.user_id: USER_ID})
        user_categorical, user_numeric = uspec.categorical, uspec.numeric
    _csv_integers([(interactions, ispec.path), (items, itspec.path)], ITEM_ID)
    _csv_integers([(interactions, ispec.path)] + ([(users, spec.users.path)] if users is not None else []), USER_ID)
    for column in [*([REQUEST_ID] if ispec.request_id else []), *ispec.context]:
        _csv_integers([(interactions, ispec.path)], column)
    for column in itspec.categorical:
        _csv_integers([(items, itspec.path)], column)
    for column in user_categorical:
        _csv_integers([(users, spec.users.path)], column)
    schema = Schema(
        label=spec.label,
        has_query=ispec.query is not None,
        has_request_id=ispec.request_id is not None,
        context=ispec.context,
        item_categorical=tuple(categorical),
        item_numeric=itspec.numeric,
        item_text=itspec.text,
        user_categorical=user_categorical,
        user_numeric=user_numeric,
    )
    dataset = Dataset(name=spec.name, schema=schema, interactions=interactions, items=items, users=users)
    return validate_dataset(dataset, policy=spec.policy, source=str(ispec.path.parent))


_PLAIN_INTEGER = r"0|-?[1-9][0-9]*"  # not "007", "-0", "+7" or "7.0": those stay text


def _csv_integers(tables: list[tuple[pd.DataFrame, Path]], column: str) -> None:
    """Makes a column read as text from CSV files (ids, categories) int64 when every value, in every table, is an
    integer.

    ``"7"`` in a CSV is the integer 7; but one value such as ``"007"``, ``"-0"``, ``" 7"`` or ``"A5"`` anywhere
    keeps the column text in every table, so ``"007"`` is never read as 7 and the tables agree on the kind of their
    ids (a Parquet table's typed column must hold integers too). Missing values make the column float, as before.
    """
    from_csv = [frame for frame, path in tables if _is_csv(path)]
    if not from_csv or not all(_all_integers(frame[column], _is_csv(path)) for frame, path in tables):
        return
    numbers = [pd.to_numeric(frame[column]) for frame in from_csv]
    if any(n.dtype.kind not in "if" for n in numbers):
        return  # beyond int64: keep the ids as text
    for frame, number in zip(from_csv, numbers, strict=True):
        frame[column] = number


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() in _CSV_SUFFIXES


def _all_integers(values: pd.Series, as_text: bool) -> bool:
    if not as_text:
        return pd.api.types.is_integer_dtype(values.dtype)
    if values.dtype != object and not pd.api.types.is_string_dtype(values.dtype):
        return False
    return bool(values.dropna().astype(str).str.fullmatch(_PLAIN_INTEGER).all())


def _as_text(column: pd.Series) -> pd.Series:
    """Optional text as plain strings, ``""`` where missing (a missing query means the request had none)."""
    return column.astype(object).where(column.notna(), "").map(str).astype(object)


_MOVIELENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def load_movielens_100k(path: str | Path, *, policy: str = "error") -> Dataset:
    """Loads the original MovieLens 100K files (``u.data``, ``u.item`` in Latin-1, ``u.user``).

    Ratings 1–5 are the label (``kind="rating"``, positives are ratings >= 4); the Unix timestamp orders each
    user's events. Items get ``genre`` (the first of the 19 genre flags, ``"unknown"`` when none is set) as a
    categorical attribute, ``genres`` (all flagged genres) and ``title`` as text, and the release ``year`` as a
    number. Users get ``gender``, ``occupation`` and ``zip_region`` (first zip digit) as categories and ``age``
    as a number.

    Args:
        path: The folder with ``u.data``, ``u.item`` and ``u.user``.
        policy: Validation policy.
    """
    folder = Path(path)
    for name in ("u.data", "u.item", "u.user"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"MovieLens 100K file {folder / name} does not exist (expected u.data, u.item, u.user)"
            )
    ratings = pd.read_csv(
        folder / "u.data",
        sep="\t",
        header=None,
        names=[USER_ID, ITEM_ID, LABEL, TIMESTAMP],
        dtype={USER_ID: np.int64, ITEM_ID: np.int64, LABEL: np.int64, TIMESTAMP: np.int64},
    )
    interactions = ratings[[USER_ID, ITEM_ID, TIMESTAMP, LABEL]]
    item_columns = [ITEM_ID, "title", "release_date", "video_release_date", "url", *_MOVIELENS_GENRES]
    raw_items = pd.read_csv(
        folder / "u.item", sep="|", header=None, names=item_columns, encoding="latin-1", keep_default_na=False
    )
    flags = raw_items[list(_MOVIELENS_GENRES)].to_numpy(dtype=bool)
    genre_names = np.array(_MOVIELENS_GENRES, dtype=object)
    first = np.where(flags.any(axis=1), flags.argmax(axis=1), 0)
    genres = [" ".join(genre_names[row]) or "unknown" for row in flags]
    year = pd.to_datetime(raw_items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    items = pd.DataFrame(
        {
            ITEM_ID: raw_items[ITEM_ID].astype(np.int64),
            "genre": genre_names[first],
            "year": year.astype(np.float64),
            "title": raw_items["title"].astype(object),
            "genres": np.array(genres, dtype=object),
        }
    )
    raw_users = pd.read_csv(
        folder / "u.user",
        sep="|",
        header=None,
        names=[USER_ID, "age", "gender", "occupation", "zip_code"],
        dtype={USER_ID: np.int64, "age": np.float64, "zip_code": str},
    )
    users = pd.DataFrame(
        {
            USER_ID: raw_users[USER_ID],
            "gender": raw_users["gender"].astype(object),
            "occupation": raw_users["occupation"].astype(object),
            "zip_region": raw_users["zip_code"].str[:1].astype(object),
            "age": raw_users["age"],
        }
    )
    schema = Schema(
        label=LabelSpec(kind="rating", min=1, max=5, positive_threshold=4),
        item_categorical=("genre",),
        item_numeric=("year",),
        item_text=("title", "genres"),
        user_categorical=("gender", "occupation", "zip_region"),
        user_numeric=("age",),
    )
    dataset = Dataset(name="movielens-100k", schema=schema, interactions=interactions, items=items, users=users)
    return validate_dataset(dataset, policy=policy, source=str(folder))


def load_amazon_5core(path: str | Path, *, name: str | None = None, policy: str = "error") -> Dataset:
    """Loads the Amazon 5-core sequence format: ``<Name>.inter.json`` and ``<Name>.item.json``.

    ``inter.json`` maps a user index to the item indices the user reviewed, oldest first: each entry is an
    implicit positive (label 1) and its position is the ``timestamp``. ``item.json`` maps an item index to its
    ``title``, ``description``, ``brand`` and ``categories`` (a comma-separated path, most general first). The
    path is expanded into ``category_l1``, ``category_l2`` and ``category_leaf`` (its last element); HTML
    entities in titles, descriptions, brands and categories are unescaped; an empty brand is missing (``None``).

    Args:
        path: The folder holding the two files.
        name: The file prefix (``"Office"``); found automatically when the folder holds one pair.
        policy: Validation policy.
    """
    folder = Path(path)
    if name is None:
        found = sorted(p.name.removesuffix(".inter.json") for p in folder.glob("*.inter.json"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected exactly one *.inter.json in {folder} (or pass name=...); found {len(found)}: {found}"
            )
        name = found[0]
    inter_path, item_path = folder / f"{name}.inter.json", folder / f"{name}.item.json"
    for file in (inter_path, item_path):
        if not file.is_file():
            raise FileNotFoundError(f"Amazon 5-core file {file} does not exist")
    sequences = json.loads(inter_path.read_text(encoding="utf-8"))
    lengths = np.fromiter((len(v) for v in sequences.values()), dtype=np.int64, count=len(sequences))
    user_ids = np.repeat(np.array([int(u) for u in sequences], dtype=np.int64), lengths)
    item_ids = np.fromiter((i for seq in sequences.values() for i in seq), dtype=np.int64, count=int(lengths.sum()))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.arange(len(item_ids), dtype=np.int64) - starts
    interactions = pd.DataFrame(
        {
            USER_ID: user_ids,
            ITEM_ID: item_ids,
            TIMESTAMP: positions,
            LABEL: np.ones(len(item_ids), dtype=np.int8),
        }
    )
    meta = json.loads(item_path.read_text(encoding="utf-8"))
    raw_items = pd.DataFrame(
        {
            ITEM_ID: np.array([int(k) for k in meta], dtype=np.int64),
            "categories": [html.unescape(v.get("categories") or "") for v in meta.values()],
            "brand": [html.unescape((v.get("brand") or "").strip()) or None for v in meta.values()],
            "title": [html.unescape(v.get("title") or "") for v in meta.values()],
            "description": [html.unescape(v.get("description") or "") for v in meta.values()],
        }
    )
    items, levels = _expand_category_path(raw_items, "categories", ",", 2)
    items = items[[ITEM_ID, *levels, "brand", "title", "description"]]
    schema = Schema(
        label=LabelSpec(kind="implicit"),
        item_categorical=(*levels, "brand"),
        item_text=("title", "description"),
    )
    dataset = Dataset(name=f"amazon-{name.lower()}", schema=schema, interactions=interactions, items=items)
    return validate_dataset(dataset, policy=policy, source=str(folder))


def load_dataset(source: DatasetSpec | str | Path, *, policy: str | None = None) -> Dataset:
    """Loads a data set from a spec, a spec file, or a folder.

    A folder is recognised by its contents: a ``spec.toml`` (e.g. written by ``cascade data synth``), the
    MovieLens 100K files, or one Amazon ``*.inter.json`` + ``*.item.json`` pair.

    Args:
        source: A `DatasetSpec`, a path to a TOML spec, or a data folder.
        policy: Overrides the spec's validation policy.
    """
    if isinstance(source, DatasetSpec):
        spec = source
    else:
        path = Path(source)
        if path.is_dir():
            if (path / "spec.toml").is_file():
                spec = DatasetSpec.from_toml(path / "spec.toml")
            elif (path / "u.data").is_file():
                return load_movielens_100k(path, policy=policy or "error")
            elif any(path.glob("*.inter.json")):
                return load_amazon_5core(path, policy=policy or "error")
            else:
                raise FileNotFoundError(
                    f"{path} holds no spec.toml, MovieLens 100K files (u.data) or Amazon 5-core files (*.inter.json)"
                )
        else:
            spec = DatasetSpec.from_toml(path)
    effective = policy or spec.policy
    if spec.format != "tables" and spec.path is None:
        raise SpecError(f"dataset spec {spec.name!r} with format {spec.format!r} needs `path` (the data folder)")
    if spec.format == "movielens-100k":
        dataset = load_movielens_100k(spec.path, policy=effective)
    elif spec.format == "amazon-5core":
        dataset = load_amazon_5core(spec.path, policy=effective)
    else:
        if policy is not None and policy != spec.policy:
            spec = replace(spec, policy=policy)
        dataset = load_tables(spec)
    if spec.name and spec.format != "tables":
        dataset.name = spec.name
    report = dataset.report
    if report is not None and getattr(report, "dropped", None):
        logger.warning("loading %s dropped rows: %s", dataset.name, report)
    return dataset
