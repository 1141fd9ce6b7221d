"""Loaders on the real data sets and on generic Parquet/CSV tables described by a spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import features
from features import DatasetSpec, SpecError
from features.validation import DataValidationError


def test_movielens_counts_match_the_published_ones(movielens: features.Dataset) -> None:
    assert (movielens.num_users, movielens.num_items, movielens.num_interactions) == (943, 1682, 100_000)
    assert movielens.users is not None and len(movielens.users) == 943
    assert movielens.interactions["label"].between(1, 5).all()
    assert movielens.report is not None and movielens.report.ok


def test_movielens_reads_latin1_titles_and_genres(movielens: features.Dataset) -> None:
    titles = movielens.items.set_index("item_id")["title"]
    # u.item is Latin-1: this title has an e-acute that a UTF-8 read would break.
    assert any("é" in t for t in titles), "expected accented Latin-1 titles to decode"
    assert titles.loc[1] == "Toy Story (1995)"
    genres = movielens.items.set_index("item_id")["genres"]
    assert genres.loc[1] == "Animation Children's Comedy"
    assert movielens.items.set_index("item_id").loc[1, "genre"] == "Animation"
    assert movielens.items.set_index("item_id").loc[1, "year"] == 1995


def test_amazon_counts_match_the_published_ones(amazon: features.Dataset) -> None:
    assert (amazon.num_users, amazon.num_items, amazon.num_interactions) == (4905, 2420, 53_258)
    assert amazon.schema.label.kind == "implicit"
    assert (amazon.interactions["label"] == 1).all()


def test_amazon_position_orders_each_users_sequence(amazon: features.Dataset) -> None:
    first = amazon.interactions[amazon.interactions["user_id"] == 1]
    # Office.inter.json: "1": [5, 6, ..., 13], oldest first.
    assert first["item_id"].tolist() == list(range(5, 14))
    assert first["timestamp"].tolist() == list(range(9))


def test_amazon_category_leaf_and_unescaped_titles(amazon: features.Dataset) -> None:
    items = amazon.items.set_index("item_id")
    assert items["category_leaf"].nunique() == 283
    assert items.loc[0, "category_l1"] == "Office Electronics"
    assert items.loc[0, "category_leaf"] == "Cordless Telephones"
    # "AT&amp;T 210 Corded Phone" in the file.
    assert items.loc[2, "title"].startswith("AT&T 210")
    assert not items["title"].str.contains("&amp;", regex=False).any()
    assert items["brand"].notna().sum() == 1935
    assert (items["title"] != "").sum() == 2417


def test_load_dataset_recognises_folders(movielens_dir: Path, amazon_dir: Path) -> None:
    assert features.load_dataset(movielens_dir).name == "movielens-100k"
    assert features.load_dataset(amazon_dir).name == "amazon-office"


def _write_tables(tmp_path: Path, fmt: str) -> Path:
    events = pd.DataFrame(
        {
            "customer": ["u1", "u1", "u2", "u2", "u2"],
            "sku": ["a", "b", "a", "c", "b"],
            "ts": [1, 2, 1, 5, 9],
            "event": ["click", "purchase", "impression", "click", "cart"],
            "q": ["red pen", None, "", "ink", "pen"],
            "device": ["app", "web", "app", "app", "web"],
        }
    )
    catalog = pd.DataFrame(
        {
            "sku": ["a", "b", "c"],
            "cats": ["Office > Pens > Gel", "Office > Paper", "Office > Pens > Ink"],
            "brand": ["acme", "acme", None],
            "price": [1.5, 3.0, np.nan],
            "title": ["Gel pen &amp; cap", "A4 paper", "Ink"],
        }
    )
    people = pd.DataFrame({"customer": ["u1", "u2"], "segment": ["x", "y"], "age": [30.0, 41.0]})
    suffix = ".parquet" if fmt == "parquet" else ".csv"
    for name, frame in (("events", events), ("catalog", catalog), ("people", people)):
        if fmt == "parquet":
            frame.to_parquet(tmp_path / f"{name}{suffix}")
        else:
            frame.to_csv(tmp_path / f"{name}{suffix}", index=False)
    spec = f"""
name = "tiny-tables"
[label]
kind = "graded"
min = 0
max = 3
positive_threshold = 1
names = {{ "0" = "impression", "1" = "click", "2" = "cart", "3" = "purchase" }}

[interactions]
path = "events{suffix}"
user_id = "customer"
item_id = "sku"
order = "ts"
label = "event"
query = "q"
context = ["device"]

[items]
path = "catalog{suffix}"
item_id = "sku"
categorical = ["brand"]
numeric = ["price"]
text = ["title"]
category_path = "cats"
category_separator = ">"
category_levels = 2

[users]
path = "people{suffix}"
user_id = "customer"
categorical = ["segment"]
numeric = ["age"]
"""
    (tmp_path / "spec.toml").write_text(spec, encoding="utf-8")
    return tmp_path / "spec.toml"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_generic_tables_load_into_canonical_form(tmp_path: Path, fmt: str) -> None:
    dataset = features.load_dataset(_write_tables(tmp_path, fmt))
    inter = dataset.interactions
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "label", "query", "device"]
    assert inter["label"].tolist() == [1, 3, 0, 1, 2]  # event names mapped to grades
    assert inter["query"].tolist() == ["red pen", "", "", "ink", "pen"]  # missing query -> ""
    items = dataset.items.set_index("item_id")
    assert dataset.schema.item_categorical == ("category_l1", "category_l2", "category_leaf", "brand")
    assert items.loc["a", "category_l2"] == "Pens" and items.loc["a", "category_leaf"] == "Gel"
    assert items.loc["b", "category_leaf"] == "Paper"
    assert dataset.users is not None and list(dataset.users.columns) == ["user_id", "segment", "age"]
    assert dataset.report is not None and dataset.report.ok


def test_spec_naming_a_missing_column_names_the_column_and_file(tmp_path: Path) -> None:
    spec_path = _write_tables(tmp_path, "parquet")
    spec_path.write_text(spec_path.read_text().replace('order = "ts"', 'order = "time"'))
    with pytest.raises(SpecError, match=r"events\.parquet has no column\(s\) \['time'\]"):
        features.load_dataset(spec_path)


def test_unknown_label_name_is_reported_not_dropped(tmp_path: Path) -> None:
    spec_path = _write_tables(tmp_path, "csv")
    events = pd.read_csv(tmp_path / "events.csv")
    events.loc[2, "event"] = "wishlist"
    events.to_csv(tmp_path / "events.csv", index=False)
    with pytest.raises(DataValidationError, match=r"interactions\.label.*'wishlist'"):
        features.load_dataset(spec_path)
    dataset = features.load_dataset(spec_path, policy="drop-and-report")
    assert len(dataset.interactions) == 4
    assert dataset.report.dropped == {"interactions": 1}


def test_non_utf8_csv_says_which_file_and_encoding(tmp_path: Path) -> None:
    spec_path = _write_tables(tmp_path, "csv")
    catalog = (tmp_path / "catalog.csv").read_text(encoding="utf-8").replace("Ink", "Encre été")
    (tmp_path / "catalog.csv").write_bytes(catalog.encode("latin-1"))
    with pytest.raises(SpecError, match=r"catalog\.csv is not valid utf-8.*encoding"):
        features.load_dataset(spec_path)
    spec_path.write_text(spec_path.read_text().replace('text = ["title"]', 'text = ["title"]\nencoding = "latin-1"'))
    dataset = features.load_dataset(spec_path)
    assert "Encre été" in dataset.items["title"].tolist()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('kind = "graded"', 'kind = "stars"'), r"`label.kind` should be one of"),
        (("positive_threshold = 1", "positive_threshold = 7"), r"positive_threshold.*\[label.min, label.max\]"),
        (('user_id = "customer"\nitem_id', 'uid = "customer"\nitem_id'), r"unknown key\(s\) \['uid'\]"),
        (('categorical = ["brand"]', 'categorical = "brand"'), r"`items.categorical` should be a list"),
        (('name = "tiny-tables"', 'name = "tiny-tables"\npolicy = "ignore"'), r"`policy` should be one of"),
        (('name = "tiny-tables"', 'name = "tiny-tables"\nformat = "excel"'), r"`format` should be one of"),
        (('path = "events.parquet"\n', ""), r"`interactions.path` is required"),
    ],
)
def test_bad_specs_fail_with_the_key_and_value(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    spec_path = _write_tables(tmp_path, "parquet")
    text = spec_path.read_text()
    assert edit[0] in text
    spec_path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(SpecError, match=message):
        DatasetSpec.from_toml(spec_path)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="spec"):
        features.load_dataset(tmp_path / "nope.toml")
    spec_path = _write_tables(tmp_path, "parquet")
    (tmp_path / "catalog.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"items file .*catalog\.parquet does not exist"):
        features.load_dataset(spec_path)
    with pytest.raises(FileNotFoundError, match=r"u\.data"):
        features.load_movielens_100k(tmp_path)


def test_builtin_format_spec(tmp_path: Path, movielens_dir: Path) -> None:
    spec = tmp_path / "ml.toml"
    spec.write_text(f'name = "ml"\nformat = "movielens-100k"\npath = "{movielens_dir}"\n')
    dataset = features.load_dataset(spec)
    assert dataset.name == "ml" and dataset.num_interactions == 100_000
