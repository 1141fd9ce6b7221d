"""`DatasetSpec`: which file holds which table and which column plays which role, loadable from TOML.

Example spec (paths are relative to the spec file)::

    name = "my-shop"
    format = "tables"            # or "movielens-100k", "amazon-5core" (then `path` is the folder)
    policy = "error"             # or "drop-and-report"

    [label]
    kind = "graded"              # "graded", "rating" or "implicit"
    min = 0
    max = 3
    positive_threshold = 1
    names = { "0" = "impression", "1" = "click", "2" = "cart", "3" = "purchase" }

    [interactions]
    path = "events.csv"
    user_id = "customer"
    item_id = "sku"
    order = "ts"                 # a timestamp or a position in the user's sequence
    label = "event"              # omit for implicit feedback (every row a positive)
    query = "search_text"        # optional
    request_id = "page_view"     # optional
    context = ["device"]         # optional

    [items]
    path = "catalog.parquet"
    item_id = "sku"
    categorical = ["brand"]
    numeric = ["price"]
    text = ["title"]
    category_path = "categories" # optional: expanded into category_l1.. and category_leaf
    category_separator = " > "
    category_levels = 2

    [users]                      # optional
    path = "users.csv"
    user_id = "customer"
    categorical = ["segment"]
    numeric = ["age"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.schema import LabelSpec
from features.validation import POLICIES

FORMATS: tuple[str, ...] = ("tables", "movielens-100k", "amazon-5core")


class SpecError(ValueError):
    """A dataset spec is malformed or does not match its files."""


def _get(section: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in section:
        if default is ...:
            raise SpecError(f"`{where}.{key}` is required. Received: no `{key}` in [{where}]")
        return default
    value = section[key]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpecError(f"`{where}.{key}` should be a {expected}. Received: {key}={value!r}")
    return value


def _names(section: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = _get(section, key, where, list, [])
    if not all(isinstance(v, str) and v for v in values):
        raise SpecError(f"`{where}.{key}` should be a list of column names. Received: {key}={values!r}")
    return tuple(values)


def _check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise SpecError(
            f"[{where}] has unknown key(s) {unknown}; expected a subset of {sorted(allowed)}. Check the spelling."
        )


@dataclass(frozen=True)
class InteractionsSpec:
    path: Path
    user_id: str
    item_id: str
    order: str
    label: str | None = None
    query: str | None = None
    request_id: str | None = None
    context: tuple[str, ...] = ()
    sep: str = ","
    encoding: str = "utf-8"


@dataclass(frozen=True)
class ItemsSpec:
    path: Path
    item_id: str
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    category_path: str | None = None
    category_separator: str = ","
    category_levels: int = 2
    sep: str = ","
    encoding: str = "utf-8"


@dataclass(frozen=True)
class UsersSpec:
    path: Path
    user_id: str
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    sep: str = ","
    encoding: str = "utf-8"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set's tables are and which columns play which role.

    Attributes:
        name: A short name for reports.
        format: ``"tables"`` (generic Parquet/CSV described by the sections below), ``"movielens-100k"`` or
            ``"amazon-5core"`` (the original files in the folder ``path``).
        path: For the built-in formats, the data folder.
        policy: Validation policy, ``"error"`` or ``"drop-and-report"``.
        label: What the label means; ignored by the built-in formats, which know their labels.
        interactions: The interactions table (``format = "tables"`` only).
        items: The item table (``format = "tables"`` only).
        users: The optional user table.
        extra: Sections this module does not interpret (e.g. ``[synthetic]``), kept for the caller.
    """

    name: str
    format: str = "tables"
    path: Path | None = None
    policy: str = "error"
    label: LabelSpec = field(default_factory=LabelSpec)
    interactions: InteractionsSpec | None = None
    items: ItemsSpec | None = None
    users: UsersSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> DatasetSpec:
        """Reads a spec file; relative paths in it are resolved against the file's folder."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"dataset spec {path} does not exist (expected a TOML file)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"dataset spec {path} is not valid TOML: {e}") from e
        return cls.from_dict(data, base_dir=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: Path = Path("."), source: str = "spec") -> DatasetSpec:
        """Builds a spec from a parsed TOML document (see the module docstring for the keys)."""
        known = {"name", "format", "path", "policy", "label", "interactions", "items", "users"}
        try:
            name = _get(data, "name", source, str, "dataset")
            fmt = _get(data, "format", source, str, "tables")
            if fmt not in FORMATS:
                raise SpecError(f"`format` should be one of {FORMATS}. Received: format={fmt!r} in {source}")
            policy = _get(data, "policy", source, str, "error")
            if policy not in POLICIES:
                raise SpecError(f"`policy` should be one of {POLICIES}. Received: policy={policy!r} in {source}")
            extra = {k: v for k, v in data.items() if k not in known}

            def resolve(p: str) -> Path:
                candidate = Path(p)
                return candidate if candidate.is_absolute() else (base_dir / candidate)

            if fmt != "tables":
                folder = resolve(_get(data, "path", source, str))
                return cls(name=name, format=fmt, path=folder, policy=policy, extra=extra)

            label_section = _get(data, "label", source, dict, {})
            _check_keys(label_section, {"kind", "min", "max", "positive_threshold", "names"}, "label")
            names = _get(label_section, "names", "label", dict, {})
            try:
                label_names = {int(k): str(v) for k, v in names.items()}
            except ValueError as e:
                raise SpecError(f"`label.names` keys should be integers (as strings). Received: {names!r}") from e
            kind = _get(label_section, "kind", "label", str, "implicit")
            try:
                label = LabelSpec(
                    kind=kind,
                    min=float(_get(label_section, "min", "label", (int, float), 1)),
                    max=float(_get(label_section, "max", "label", (int, float), 1)),
                    positive_threshold=float(_get(label_section, "positive_threshold", "label", (int, float), 1)),
                    names=label_names,
                )
            except ValueError as e:
                raise SpecError(f"{e} (in {source})") from e

            inter = _get(data, "interactions", source, dict)
            _check_keys(
                inter,
                {
                    "path",
                    "user_id",
                    "item_id",
                    "order",
                    "label",
                    "query",
                    "request_id",
                    "context",
                    "sep",
                    "encoding",
                },
                "interactions",
            )
            interactions = InteractionsSpec(
                path=resolve(_get(inter, "path", "interactions", str)),
                user_id=_get(inter, "user_id", "interactions", str),
                item_id=_get(inter, "item_id", "interactions", str),
                order=_get(inter, "order", "interactions", str),
                label=_get(inter, "label", "interactions", str, None),
                query=_get(inter, "query", "interactions", str, None),
                request_id=_get(inter, "request_id", "interactions", str, None),
                context=_names(inter, "context", "interactions"),
                sep=_get(inter, "sep", "interactions", str, ","),
                encoding=_get(inter, "encoding", "interactions", str, "utf-8"),
            )
            if interactions.label is None and label.kind != "implicit":
                raise SpecError(
                    f"`interactions.label` is required when label.kind is {label.kind!r}. Received: no label "
                    f"column in {source}"
                )
            it = _get(data, "items", source, dict)
            _check_keys(
                it,
                {
                    "path",
                    "item_id",
                    "categorical",
                    "numeric",
                    "text",
                    "category_path",
                    "category_separator",
                    "category_levels",
                    "sep",
                    "encoding",
                },
                "items",
            )
            levels = _get(it, "category_levels", "items", int, 2)
            if levels < 0:
                raise SpecError(f"`items.category_levels` should be >= 0. Received: category_levels={levels}")
            items = ItemsSpec(
                path=resolve(_get(it, "path", "items", str)),
                item_id=_get(it, "item_id", "items", str),
                categorical=_names(it, "categorical", "items"),
                numeric=_names(it, "numeric", "items"),
                text=_names(it, "text", "items"),
                category_path=_get(it, "category_path", "items", str, None),
                category_separator=_get(it, "category_separator", "items", str, ","),
                category_levels=levels,
                sep=_get(it, "sep", "items", str, ","),
                encoding=_get(it, "encoding", "items", str, "utf-8"),
            )
            users = None
            if "users" in data:
                us = _get(data, "users", source, dict)
                _check_keys(us, {"path", "user_id", "categorical", "numeric", "sep", "encoding"}, "users")
                users = UsersSpec(
                    path=resolve(_get(us, "path", "users", str)),
                    user_id=_get(us, "user_id", "users", str),
                    categorical=_names(us, "categorical", "users"),
                    numeric=_names(us, "numeric", "users"),
                    sep=_get(us, "sep", "users", str, ","),
                    encoding=_get(us, "encoding", "users", str, "utf-8"),
                )
        except SpecError as e:
            if source in str(e):
                raise
            raise SpecError(f"{e} (in {source})") from e
        return cls(
            name=name,
            format=fmt,
            policy=policy,
            label=label,
            interactions=interactions,
            items=items,
            users=users,
            extra=extra,
        )
