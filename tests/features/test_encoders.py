"""Tests of features.encoders: hand-computed encodings, leakage (fit on training rows only), save/load."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.encoders import (
    MANIFEST_FILE,
    Bucketizer,
    EncoderConfig,
    FeatureEncoders,
    NumericNormalizer,
    TextTokenizer,
    Vocabulary,
    encode_history,
    make_tf_dataset,
)
from features.queries import QueryBatch, build_queries
from features.schema import Dataset, LabelSpec, Schema

REPO_ROOT = Path(__file__).resolve().parents[2]
B = 3  # num_oov_buckets of the test config: known values start at index B + 1 = 4.


# ---------------------------------------------------------------------------------------------------------------
# A tiny data set. Rows 0-4 are the training split, rows 5-7 the test split.
# Test-only values: item 13 and 14 (14 is never interacted with in training: a cold item), user u4, device
# "tv", query tokens "zebra", "lamp". Row 3 (u2, 12) is a negative (label 0).
# ---------------------------------------------------------------------------------------------------------------


def _dataset(item_ids: list | None = None) -> Dataset:
    item_ids = item_ids or [10, 11, 12, 13, 14]
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "category": ["shoes", "shoes", "hats", None, "bags"],
            "brand": ["acme", "zenith", "acme", "acme", "nova"],
            "price": [10.0, 20.0, np.nan, 1000.0, 5.0],
            "title": ["Red Shoes &amp; Socks", "Blue-Shoes!", "Sun Hat", "", "Bag (Large)"],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "segment": ["a", "b", "a", "c"],
            "age": [30.0, np.nan, 40.0, 99.0],
        }
    )
    i = dict(enumerate(item_ids))
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u1", "u4", "u2"],
            "item_id": [i[0], i[1], i[0], i[2], i[1], i[3], i[4], i[1]],
            "timestamp": [1, 2, 1, 3, 2, 5, 6, 7],
            "label": [1, 1, 1, 0, 1, 1, 1, 1],
            "query": ["red shoes", "", "red shoes", "sun hat", "blue shoes", "zebra lamp", "nova bag", ""],
            "device": ["ios", "web", "ios", "ios", "android", "tv", "web", "ios"],
        }
    )
    schema = Schema(
        label=LabelSpec(kind="graded", min=0, max=3, positive_threshold=1),
        has_query=True,
        context=("device",),
        item_categorical=("category", "brand"),
        item_numeric=("price",),
        item_text=("title",),
        user_categorical=("segment",),
        user_numeric=("age",),
    )
    return Dataset(name="tiny", schema=schema, interactions=interactions, items=items, users=users)


CONFIG = EncoderConfig(
    num_oov_buckets=B,
    token_min_count=1,
    max_query_tokens=4,
    max_text_tokens=4,
    max_history=3,
    num_numeric_buckets=2,
)


@pytest.fixture
def dataset() -> Dataset:
    return _dataset()


@pytest.fixture
def train(dataset: Dataset) -> pd.DataFrame:
    return dataset.interactions.iloc[:5]


@pytest.fixture
def test_rows(dataset: Dataset) -> pd.DataFrame:
    return dataset.interactions.iloc[5:]


@pytest.fixture
def encoders(dataset: Dataset, train: pd.DataFrame) -> FeatureEncoders:
    return FeatureEncoders.fit(dataset, train, config=CONFIG)


def _is_oov(indices: np.ndarray) -> np.ndarray:
    return (indices >= 1) & (indices <= B)


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------------------


def test_vocabulary_orders_by_count_then_value():
    # counts: b=3, a=2, c=2, d=1 -> b, then the a/c tie by value, then d.
    vocab = Vocabulary.fit(["c", "b", "a", "b", "c", "a", "b", "d"], name="brand", num_oov_buckets=2)
    assert vocab.values.tolist() == ["b", "a", "c", "d"]
    assert vocab.size == 1 + 2 + 4
    np.testing.assert_array_equal(vocab.encode(["b", "a", "c", "d"]), [3, 4, 5, 6])
    assert vocab.encode(["b"]).dtype == np.int32


def test_vocabulary_min_count_and_max_size():
    values = [5, 5, 5, 7, 7, 9, 9, 1]
    assert Vocabulary.fit(values, name="x", min_count=2).values.tolist() == [5, 7, 9]
    assert Vocabulary.fit(values, name="x", max_size=2).values.tolist() == [5, 7]
    assert Vocabulary.fit(values, name="x", min_count=2, max_size=1).values.tolist() == [5]


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(
        st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=30),
        st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=30),
    )
)
def test_vocabulary_decode_inverts_encode_for_known_values(values):
    vocab = Vocabulary.fit(np.array(values, dtype=object), name="x", num_oov_buckets=4)
    indices = vocab.encode(np.array(values, dtype=object))
    assert (indices >= 5).all()
    assert vocab.decode(indices).tolist() == values


def test_vocabulary_missing_values_are_padding():
    vocab = Vocabulary.fit(["a", "b"], name="brand", num_oov_buckets=2)  # a=3, b=4 (tie broken by value)
    np.testing.assert_array_equal(vocab.encode(np.array([None, np.nan, "", pd.NA, "b"], dtype=object)), [0, 0, 0, 0, 4])
    np.testing.assert_array_equal(vocab.encode(pd.Series(["a", None], dtype="str")), [3, 0])
    ints = Vocabulary.fit([3, 4], name="item_id")  # one OOV bucket: 3 -> 2, 4 -> 3
    # An int column that picked up NaN arrives as floats; NaN is missing, integral floats are the ints.
    np.testing.assert_array_equal(ints.encode(np.array([3.0, np.nan, 4.0])), [2, 0, 3])
    np.testing.assert_array_equal(ints.encode(pd.Series([4, None], dtype="Int64")), [3, 0])


def test_vocabulary_unseen_values_land_in_oov_buckets():
    vocab = Vocabulary.fit(["a", "b"], name="brand", num_oov_buckets=5)
    unseen = [f"unseen-{i}" for i in range(200)]
    indices = vocab.encode(unseen)
    assert ((indices >= 1) & (indices <= 5)).all()
    assert len(set(indices.tolist())) == 5  # 200 values spread over every bucket
    np.testing.assert_array_equal(vocab.encode(unseen), indices)  # deterministic
    ints = Vocabulary.fit([1, 2], name="item_id", num_oov_buckets=5).encode(np.arange(100, 300))
    assert ((ints >= 1) & (ints <= 5)).all()


_OOV_SCRIPT = (
    "from features.encoders import Vocabulary; "
    "v = Vocabulary.fit(['a', 'b'], name='x', num_oov_buckets=97); "
    "w = Vocabulary.fit([1, 2], name='y', num_oov_buckets=97); "
    "print(v.encode(['brand-new value', 'other'])[0], v.encode(['other'])[0], w.encode([123456789])[0])"
)


def test_oov_buckets_are_stable_across_processes():
    outputs = []
    for hash_seed in ("1", "2"):  # Python's own str hash differs between these processes
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", _OOV_SCRIPT],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(result.stdout.split())
    v = Vocabulary.fit(["a", "b"], name="x", num_oov_buckets=97)
    w = Vocabulary.fit([1, 2], name="y", num_oov_buckets=97)
    here = [str(v.encode(["brand-new value"])[0]), str(v.encode(["other"])[0]), str(w.encode([123456789])[0])]
    assert outputs[0] == outputs[1] == here
    assert all(1 <= int(x) <= 97 for x in here)


def test_vocabulary_rejects_values_of_the_other_kind():
    ints = Vocabulary.fit([1, 2], name="item_id")
    with pytest.raises(ValueError, match=r"`item_id` should hold int values.*Received: str values, e.g. 'x'"):
        ints.encode(["x"])
    strings = Vocabulary.fit(["a"], name="brand")
    with pytest.raises(ValueError, match=r"`brand` should hold str values.*Received: int values, e.g. 7"):
        strings.encode([7])
    with pytest.raises(ValueError, match=r"`brand` should hold values of one kind"):
        Vocabulary.fit(np.array(["a", 1], dtype=object), name="brand")
    with pytest.raises(ValueError, match=r"non-integral float values, e.g. 1.5"):
        ints.encode([1.5])


def test_vocabulary_decode_rejects_padding_and_oov():
    vocab = Vocabulary.fit(["a"], name="brand", num_oov_buckets=2)
    with pytest.raises(ValueError, match=r"known values of vocabulary 'brand', in \[3, 4\)"):
        vocab.decode([0, 2])


def test_vocabulary_validates_arguments():
    with pytest.raises(
        ValueError, match=r"`num_oov_buckets` should be a positive integer. Received: num_oov_buckets=0"
    ):
        Vocabulary.fit(["a"], name="x", num_oov_buckets=0)
    with pytest.raises(ValueError, match=r"`min_count` should be a positive integer"):
        Vocabulary.fit(["a"], name="x", min_count=0)


# ---------------------------------------------------------------------------------------------------------------
# Numeric
# ---------------------------------------------------------------------------------------------------------------


def test_bucketizer_quantiles_by_hand():
    # Train 1..8, 4 buckets: quantiles at 0.25/0.5/0.75 with linear interpolation sit at positions
    # 0.25*7=1.75, 3.5, 5.25 -> boundaries 2.75, 4.5, 6.25.
    bucketizer = Bucketizer.fit(np.arange(1.0, 9.0), name="price", num_buckets=4)
    np.testing.assert_allclose(bucketizer.boundaries, [2.75, 4.5, 6.25])
    values = np.array([1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 100.0, -5.0, np.nan, np.inf])
    expected = [1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 1, 0, 0]  # 4.5 is a boundary: it goes up
    np.testing.assert_array_equal(bucketizer.transform(values), expected)
    assert bucketizer.size == 5


def test_bucketizer_merges_repeated_quantiles():
    bucketizer = Bucketizer.fit(np.array([1.0, 1.0, 1.0, 1.0, 2.0]), name="x", num_buckets=4)
    np.testing.assert_allclose(bucketizer.boundaries, [1.0])  # quantiles 1, 1, 1 merged
    np.testing.assert_array_equal(bucketizer.transform(np.array([0.0, 1.0, 2.0])), [1, 2, 2])
    assert bucketizer.size == 5


@pytest.mark.parametrize("log1p", [False, True])
def test_normalizer_statistics_equal_numpy(log1p):
    train = np.array([10.0, 20.0, np.nan, 1000.0, 5.0, np.inf])
    finite = np.array([10.0, 20.0, 1000.0, 5.0])
    transformed = np.log1p(finite) if log1p else finite
    normalizer = NumericNormalizer.fit(train, name="price", log1p=log1p)
    assert normalizer.mean == np.mean(transformed)  # the same numpy reduction: exactly equal
    assert normalizer.std == np.std(transformed)
    out = normalizer.transform(np.array([20.0, np.nan, -np.inf]))
    expected_20 = ((np.log1p(20.0) if log1p else 20.0) - np.mean(transformed)) / np.std(transformed)
    np.testing.assert_allclose(out.values, [expected_20, 0.0, 0.0], rtol=1e-6)  # missing -> the mean -> 0
    np.testing.assert_array_equal(out.missing, [0.0, 1.0, 1.0])
    assert out.values.dtype == np.float32 and out.missing.dtype == np.float32


def test_normalizer_constant_feature_has_unit_std():
    normalizer = NumericNormalizer.fit(np.array([3.0, 3.0]), name="x")
    assert normalizer.std == 1.0
    np.testing.assert_array_equal(normalizer.transform(np.array([3.0, 4.0])).values, [0.0, 1.0])


def test_numeric_rejects_strings():
    with pytest.raises(ValueError, match=r"`price` should hold numbers. Received: mixed values, e.g. 'cheap'"):
        NumericNormalizer.fit(np.array([1.0, "cheap"], dtype=object), name="price")
    with pytest.raises(ValueError, match=r"`price` should hold numbers. Received: string values, e.g. 'cheap'"):
        Bucketizer.fit(pd.Series(["cheap"]), name="price", num_buckets=2)


# ---------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------


def test_tokenizer_lowercases_unescapes_and_splits_punctuation():
    tokenizer = TextTokenizer.fit(["x"])
    texts = [
        "Red Shoes &amp; Socks",
        "Blue-Shoes!",
        "AT&amp;T",
        "Levi’s – 2-Pack",
        "Café&nbsp;Crème",
        None,
        "",
    ]
    assert tokenizer.tokenize(np.array(texts, dtype=object)) == [
        ["red", "shoes", "socks"],
        ["blue", "shoes"],
        ["at", "t"],
        ["levi", "s", "2", "pack"],
        ["café", "crème"],
        [],
        [],
    ]


def _reference_tokens(text: str) -> list[str]:
    """A token is a maximal run of Unicode letters (L*), numbers (N*) and marks (M*)."""
    import html

    tokens, current = [], []
    for char in html.unescape(text).lower():
        if unicodedata.category(char)[0] in "LNM":
            current.append(char)
        elif current:
            tokens.append("".join(current))
            current = []
    if current:
        tokens.append("".join(current))
    return tokens


_TEXT_PIECES = [*"aZ09 -_.,!’–\u00a0éÉß½\u0301日本&;#", "&amp;", "&lt;", "&#39;", "&eacute;", "&AMP;"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_TEXT_PIECES), max_size=12).map("".join), min_size=1, max_size=8))
def test_tokenizer_matches_a_per_character_reference(texts):
    tokenizer = TextTokenizer.fit(["x"])
    assert tokenizer.tokenize(np.array(texts, dtype=object)) == [_reference_tokens(t) for t in texts]


def test_tokenizer_encode_pads_and_truncates():
    tokenizer = TextTokenizer.fit(["b a c", "a"], num_oov_buckets=2)  # a=3 (2 uses), then b=4, c=5
    out = tokenizer.encode(["A b c a b", "c", "", "zzz"], max_tokens=3)
    assert out.dtype == np.int32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out[:3], [[3, 4, 5], [5, 0, 0], [0, 0, 0]])
    assert 1 <= out[3, 0] <= 2 and out[3, 1:].tolist() == [0, 0]


def test_tokenizer_min_count():
    tokenizer = TextTokenizer.fit(["red shoes", "red hat"], min_count=2)
    assert tokenizer.vocabulary.values.tolist() == ["red"]


def test_tokenizer_rejects_non_strings():
    with pytest.raises(ValueError, match=r"`tokens` should hold strings. Received: int values, e.g. 3"):
        TextTokenizer.fit(np.array(["a", 3], dtype=object))


# ---------------------------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------------------------


def test_history_padding_and_truncation():
    vocab = Vocabulary.fit([10, 11, 12], name="item_id", num_oov_buckets=1)  # 10->2, 11->3, 12->4
    # Row 0 is longer than max_history (keeps the 2 most recent), row 1 is padded, row 2 is empty; the raw
    # padding value 0 is never looked up.
    history = np.array([[12, 11, 10], [11, 0, 0], [0, 0, 0]])
    indices, length = encode_history(history, np.array([3, 1, 0]), vocabulary=vocab, max_history=2)
    np.testing.assert_array_equal(indices, [[4, 3], [3, 0], [0, 0]])
    np.testing.assert_array_equal(length, [2, 1, 0])
    wide, wide_length = encode_history(history, np.array([3, 1, 0]), vocabulary=vocab, max_history=5)
    np.testing.assert_array_equal(wide, [[4, 3, 2, 0, 0], [3, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(wide_length, [3, 1, 0])
    assert indices.dtype == np.int32 and length.dtype == np.int32


def test_history_rejects_lengths_beyond_the_width():
    vocab = Vocabulary.fit([10], name="item_id")
    with pytest.raises(ValueError, match=r"`history_length` should be integers in \[0, 2\]"):
        encode_history(np.array([[10, 10]]), np.array([3]), vocabulary=vocab, max_history=2)


# ---------------------------------------------------------------------------------------------------------------
# FeatureEncoders
# ---------------------------------------------------------------------------------------------------------------


def test_fit_uses_training_rows_only(dataset, train, test_rows, encoders):
    # Item-id vocabulary: train counts 10:2, 11:2, 12:1 -> 10, 11, 12 (tie by value).
    assert encoders.item_ids.values.tolist() == [10, 11, 12]
    assert encoders.user_ids.values.tolist() == ["u1", "u2", "u3"]
    assert encoders.context["device"].values.tolist() == ["ios", "android", "web"]
    # Test-only values encode to OOV buckets.
    assert _is_oov(encoders.item_ids.encode([13, 14])).all()
    assert _is_oov(encoders.user_ids.encode(["u4"])).all()
    assert _is_oov(encoders.context["device"].encode(["tv"])).all()
    assert _is_oov(encoders.tokenizer.encode(["zebra lamp"], max_tokens=2)).all()
    # "nova" and "bag" come from the catalog (brand is not text; the title "Bag (Large)" is), so only "bag" is known.
    assert "bag" in encoders.tokenizer.vocabulary.values and "nova" not in encoders.tokenizer.vocabulary.values
    # Popularity: positives of the training rows only: 10 -> 2, 11 -> 2 (the test positive of item 11 is not
    # counted), 12 -> 0 (its only training row is a negative); padding and OOV rows 0.
    expected = np.zeros(1 + B + 3, dtype=np.int64)
    expected[B + 1 : B + 4] = [2, 2, 0]
    np.testing.assert_array_equal(encoders.item_popularity, expected)


def test_user_attributes_fitted_on_training_users(encoders):
    assert encoders.user_categorical["segment"].values.tolist() == ["a", "b"]  # u4's "c" is not known
    normalizer = encoders.user_normalizers["age"]
    assert normalizer.mean == pytest.approx(35.0) and normalizer.std == pytest.approx(5.0)  # ages 30, 40


def test_item_attributes_fitted_on_the_catalog(encoders):
    # The catalog is serving-time metadata: every item's category and brand are known, cold items' too.
    assert sorted(encoders.item_categorical["brand"].values.tolist()) == ["acme", "nova", "zenith"]
    prices = np.log1p([10.0, 20.0, 1000.0, 5.0])  # price is in log1p_columns by default
    assert encoders.item_normalizers["price"].mean == pytest.approx(prices.mean())
    assert encoders.item_normalizers["price"].std == pytest.approx(prices.std())
    np.testing.assert_allclose(encoders.item_bucketizers["price"].boundaries, [15.0])  # median of 5, 10, 20, 1000


def test_encode_items(dataset, encoders):
    features = encoders.encode_items(dataset.items)
    assert list(features) == encoders.item_feature_keys()
    assert list(features) == [
        "item_id",
        "item_category",
        "item_brand",
        "item_price",
        "item_price_missing",
        "item_price_bucket",
        "item_title_tokens",
    ]
    np.testing.assert_array_equal(features["item_id"][:3], [B + 1, B + 2, B + 3])
    assert _is_oov(features["item_id"][3:]).all()  # 13, 14: cold items
    assert features["item_category"][3] == 0  # None
    np.testing.assert_array_equal(features["item_price_bucket"], [1, 2, 0, 2, 1])
    np.testing.assert_array_equal(features["item_price_missing"], [0, 0, 1, 0, 0])
    assert features["item_price"][2] == 0.0
    assert features["item_title_tokens"].shape == (5, CONFIG.max_text_tokens)
    tokens = encoders.tokenizer.vocabulary.decode(features["item_title_tokens"][0, :3])
    assert tokens.tolist() == ["red", "shoes", "socks"]
    for key, array in features.items():
        assert len(array) == 5
        assert array.dtype == (np.float32 if key in ("item_price", "item_price_missing") else np.int32), key
    sizes = encoders.vocabulary_sizes
    for key in ("item_id", "item_category", "item_brand", "item_price_bucket", "item_title_tokens"):
        assert features[key].max() < sizes[key]


def test_encode_queries(dataset, train, test_rows, encoders):
    queries = build_queries(test_rows, dataset, history_source=train)
    features = encoders.encode_queries(queries)
    assert list(features) == encoders.query_feature_keys()
    assert list(features) == [
        "user_id",
        "user_segment",
        "user_age",
        "user_age_missing",
        "user_age_bucket",
        "query_tokens",
        "history",
        "history_length",
        "context_device",
    ]
    # Rows: (u1, t5), (u4, t6), (u2, t7). u1's training positives before t5: 10 (t1), 11 (t2), most recent first;
    # u4 has none; u2 has 10 (its row with 12 is a negative).
    np.testing.assert_array_equal(features["history"], [[B + 2, B + 1, 0], [0, 0, 0], [B + 1, 0, 0]])
    np.testing.assert_array_equal(features["history_length"], [2, 0, 1])
    assert features["user_id"][0] == B + 1 and _is_oov(features["user_id"][1:2]).all()
    assert _is_oov(features["user_segment"][1:2]).all()  # u4's segment "c" is not a training user's
    np.testing.assert_allclose(features["user_age"], [-1.0, 12.8, 0.0])  # (30-35)/5, (99-35)/5, NaN -> mean
    np.testing.assert_array_equal(features["user_age_missing"], [0, 0, 1])
    assert _is_oov(features["context_device"][:1]).all()  # "tv"
    assert features["query_tokens"].shape == (3, CONFIG.max_query_tokens)
    np.testing.assert_array_equal(features["query_tokens"][2], [0, 0, 0, 0])  # no query text


def test_string_item_ids_and_history():
    dataset = _dataset(item_ids=["i10", "i11", "i12", "i13", "i14"])
    train = dataset.interactions.iloc[:5]
    encoders = FeatureEncoders.fit(dataset, train, config=CONFIG)
    queries = build_queries(dataset.interactions.iloc[5:], dataset, history_source=train)
    features = encoders.encode_queries(queries)
    np.testing.assert_array_equal(features["history"], [[B + 2, B + 1, 0], [0, 0, 0], [B + 1, 0, 0]])
    assert encoders.item_ids.decode(features["history"][0, :2]).tolist() == ["i11", "i10"]
    with pytest.raises(ValueError, match=r"`item_id` should hold str values.*Received: int values, e.g. 10"):
        encoders.item_ids.encode(np.array([10]))


def test_query_tokens_count_once_per_request():
    base = _dataset()
    # Three impression rows of request r1 repeat its query; "rare" is searched once, so with token_min_count=2
    # it stays unknown, while "common" (requests r1 and r2) is known.
    train = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "item_id": [10, 11, 12, 10],
            "timestamp": [1, 1, 1, 2],
            "label": [0, 1, 0, 1],
            "query": ["rare common", "rare common", "rare common", "common"],
            "request_id": ["r1", "r1", "r1", "r2"],
            "device": ["ios", "ios", "ios", "web"],
        }
    )
    schema = dataclasses.replace(base.schema, has_request_id=True)
    dataset = Dataset(name="requests", schema=schema, interactions=train, items=base.items, users=base.users)
    encoders = FeatureEncoders.fit(dataset, train, config=EncoderConfig(token_min_count=2))
    assert "common" in encoders.tokenizer.vocabulary.values
    assert "rare" not in encoders.tokenizer.vocabulary.values


def test_save_load_round_trip(tmp_path, dataset, train, test_rows, encoders):
    encoders.save(tmp_path / "encoders")
    loaded = FeatureEncoders.load(tmp_path / "encoders")
    queries = build_queries(test_rows, dataset, history_source=train)
    for before, after in (
        (encoders.encode_items(dataset.items), loaded.encode_items(dataset.items)),
        (encoders.encode_queries(queries), loaded.encode_queries(queries)),
    ):
        assert list(before) == list(after)
        for key in before:
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    np.testing.assert_array_equal(loaded.item_popularity, encoders.item_popularity)
    assert loaded.config == encoders.config
    assert loaded.vocabulary_sizes == encoders.vocabulary_sizes
    manifest = json.loads((tmp_path / "encoders" / MANIFEST_FILE).read_text())
    assert manifest["components"]["item_id"]["kind"] == "int"
    assert manifest["components"]["user_id"]["kind"] == "str"
    assert not [p.name for p in (tmp_path / "encoders").iterdir() if p.suffix not in (".json", ".npy")]


def _array_file(directory: Path, component: str) -> str:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    return next(iter(manifest["components"][component]["files"].values()))


def test_load_rejects_an_array_of_another_length(tmp_path, encoders):
    directory = encoders.save(tmp_path / "enc")
    file = _array_file(directory, "item_id")
    np.save(directory / file, np.array([10, 11], dtype=np.int64))
    with pytest.raises(ValueError, match=rf"{file} has 2 rows but encoders.json says 3"):
        FeatureEncoders.load(directory)


def test_load_rejects_a_modified_array(tmp_path, encoders):
    directory = encoders.save(tmp_path / "enc")
    file = _array_file(directory, "item_id")
    np.save(directory / file, np.array([10, 11, 99], dtype=np.int64))
    with pytest.raises(ValueError, match=rf"{file} has SHA-256 .* but encoders.json says"):
        FeatureEncoders.load(directory)


def test_load_rejects_another_format_version(tmp_path, encoders):
    directory = encoders.save(tmp_path / "enc")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["format_version"] = 999
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"encoders.json has format_version=999, but this code reads format_version=1"):
        FeatureEncoders.load(directory)


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"encoders.json does not exist"):
        FeatureEncoders.load(tmp_path / "nothing")


def test_save_overwrites_in_place_without_temporary_files(tmp_path, encoders):
    directory = encoders.save(tmp_path / "enc")
    encoders.save(directory)
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]
    FeatureEncoders.load(directory)


def test_missing_column_is_named(dataset, train, encoders):
    with pytest.raises(ValueError, match=r"`items` should have the columns \['brand'\]. Received columns: \["):
        encoders.encode_items(dataset.items.drop(columns=["brand"]))
    with pytest.raises(ValueError, match=r"`train_interactions` should have the columns \['device'\]"):
        FeatureEncoders.fit(dataset, train.drop(columns=["device"]), config=CONFIG)


def test_wrong_dtype_is_named(dataset, encoders):
    items = dataset.items.assign(price=["cheap", "1", "2", "3", "4"])
    with pytest.raises(ValueError, match=r"`price` should hold numbers. Received: string values, e.g. 'cheap'"):
        encoders.encode_items(items)
    with pytest.raises(ValueError, match=r"`item_id` should hold int values.*Received: str values"):
        encoders.encode_items(dataset.items.assign(item_id=["a", "b", "c", "d", "e"]))


def test_queries_without_the_fitted_context_are_rejected(dataset, train, encoders):
    queries = build_queries(train, dataset, history_source=train)
    queries = QueryBatch(
        user_id=queries.user_id,
        query=queries.query,
        history=queries.history,
        history_length=queries.history_length,
        timestamp=queries.timestamp,
        user_attributes=queries.user_attributes,
    )
    with pytest.raises(ValueError, match=r"`queries.context` should hold the context columns \['device'\]"):
        encoders.encode_queries(queries)


def test_encoder_config_validation():
    with pytest.raises(ValueError, match=r"`max_history` should be a positive integer. Received: max_history=0"):
        EncoderConfig(max_history=0)
    with pytest.raises(ValueError, match=r"`max_vocab_size` should be a positive integer"):
        EncoderConfig(max_vocab_size=-1)
    with pytest.raises(ValueError, match=r"`log1p_columns` should be a tuple of column names"):
        EncoderConfig(log1p_columns="price")
    with pytest.raises(ValueError, match=r"Unknown EncoderConfig fields \['bogus'\]"):
        EncoderConfig.from_dict({"bogus": 1})
    assert EncoderConfig.from_dict(CONFIG.to_dict()) == CONFIG


# ---------------------------------------------------------------------------------------------------------------
# tf.data
# ---------------------------------------------------------------------------------------------------------------


def test_make_tf_dataset_shapes_and_dtypes(dataset, encoders):
    import tensorflow as tf

    features = encoders.encode_items(dataset.items)
    labels = np.arange(5, dtype=np.float32)
    ds = make_tf_dataset(features, labels=labels, batch_size=2)
    element_features, element_labels = ds.element_spec
    assert element_features["item_title_tokens"].shape.as_list() == [None, CONFIG.max_text_tokens]
    assert element_features["item_id"].dtype == tf.int32
    assert element_features["item_price"].dtype == tf.float32
    assert element_labels.dtype == tf.float32
    batches = list(ds.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b[0]["item_id"] for b in batches]), features["item_id"])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)

    dropped = make_tf_dataset(features, batch_size=2, drop_remainder=True)
    assert dropped.element_spec["item_id"].shape.as_list() == [2]
    assert len(list(dropped.as_numpy_iterator())) == 2


def test_make_tf_dataset_shuffle_is_seeded():
    features = {"x": np.arange(100, dtype=np.int32), "y": np.arange(100, dtype=np.float32) * 2}

    def order(seed: int) -> np.ndarray:
        ds = make_tf_dataset(features, batch_size=16, shuffle=True, seed=seed)
        batches = list(ds.as_numpy_iterator())
        for batch in batches:
            np.testing.assert_array_equal(batch["y"], batch["x"] * 2)  # rows stay aligned across features
        return np.concatenate([b["x"] for b in batches])

    first = order(seed=7)
    np.testing.assert_array_equal(first, order(seed=7))
    assert sorted(first.tolist()) == list(range(100))
    assert not np.array_equal(first, np.arange(100))
    assert not np.array_equal(first, order(seed=8))


def test_make_tf_dataset_validates_inputs():
    with pytest.raises(ValueError, match=r"`batch_size` should be a positive integer. Received: batch_size=0"):
        make_tf_dataset({"x": np.zeros(3)}, batch_size=0)
    with pytest.raises(ValueError, match=r"same number of rows"):
        make_tf_dataset({"x": np.zeros(3), "y": np.zeros(2)}, batch_size=2)
    with pytest.raises(ValueError, match=r"`features\['x'\]` should be a numeric array"):
        make_tf_dataset({"x": np.array(["a"], dtype=object)}, batch_size=2)
