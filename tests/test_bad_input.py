"""The bad-input catalogue: every kind of bad input Cascade is known to meet, in one table, and what it does.

Each row of `CASES` is one kind of bad input, with

- ``id``: a short name (``area/what``), the test id;
- ``trigger``: a callable that feeds the bad input to the real code (real files, a real trained bundle, the real
  CLI; no mocks);
- ``raises``: the documented exception type, or ``None`` for a documented, well-defined result that ``check``
  asserts (padding, a report count, "ignored");
- ``contains``: substrings the message must hold: the field or argument named, what was expected, what was
  received (``'k'``, ``'positive'``, ``'0'``).

Every error row also asserts the error is ours: a ``ValueError``, ``TypeError`` or ``FileNotFoundError`` raised by
Cascade, or one of its own classes (`features.SpecError`, `features.DataValidationError`, `index.ManifestError`),
never a raw ``KeyError`` / ``IndexError`` / ``UnicodeDecodeError`` or a TensorFlow, FAISS, numpy or pandas
exception, and that the message carries no traceback or library internals (``RAW_MARKERS``). CLI rows run
``cascade.cli.main([...])`` in-process: the exit code is not 0, stderr ends with one ``error:`` line naming the
problem, and holds no traceback.

Documented non-errors (rows with ``raises=None``):

- a table file with a column the spec does not name: the column is not read; it is counted and listed in an INFO
  log record of `features.loaders`;
- ``policy="drop-and-report"``: offending rows are dropped and counted in ``dataset.report.dropped``;
- a user with a single interaction: kept in training, never held out, counted in ``split.report.users_too_few``;
- ``k`` larger than the catalog: ``[num_queries, k]`` results padded with slot -1, id `index.PAD_INT_ID`, score
  ``-inf``;
- ``exclude`` naming ids that are not in the catalog: ignored (the results equal those without them);
- NaN in a query's numeric user attribute or its context: unknown, exactly like ``None``.

Areas: ``loader`` (files described by a `DatasetSpec`, `validate_dataset`, splits), ``spec`` (dataset spec TOML),
``config`` (run, training, build and evaluation configs), ``cli``, ``search`` (`index.Searcher` calls and `Query`
objects), ``artifact`` (index bundle directories). One tiny cascade is trained per module, and only when a
search, artifact or CLI-search row runs.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import features
from cascade.evaluate import EvalConfig
from cascade.pipeline import RunConfig
from distill.trainer import CascadeConfig
from features import DatasetSpec, DataValidationError, SpecError
from index import PAD_INT_ID, BuildConfig, IndexConfig, ManifestError, Query, Searcher
from tests.conftest import make_tiny_shop

RAW_MARKERS = (
    "Traceback (most recent call last)",
    "tensorflow.python",
    "faiss::",
    "faiss/",
    "site-packages",
    "pandas._libs",
    "numpy._core",
)
"""Strings that betray a library's own error leaking through instead of one of ours."""

_OWN_PACKAGES = ("features.", "ranking.", "retrieval.", "distill.", "index.", "cascade.")
_PLAIN_ERRORS = (ValueError, TypeError, FileNotFoundError)


# -- the environment every trigger gets --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A Flat index bundle of a tiny cascade (label-only students, one epoch per stage: the cheapest real build)."""
    from distill.trainer import save_cascade, train_cascade
    from index import build_index
    from tests.index.index_fixtures import TINY

    config = replace(
        TINY,
        teacher=replace(TINY.teacher, epochs=1),
        two_tower=replace(TINY.two_tower, epochs=1),
        modes=("label_only",),
    )
    shop = features.generate_shop(features.SyntheticConfig(num_users=100, num_items=120, num_interactions=1500, seed=3))
    split = features.temporal_leave_last_out(shop.dataset)
    trained = train_cascade(shop.dataset, split, config=config, show_progress=False)
    root = tmp_path_factory.mktemp("bad_input")
    model_dir = save_cascade(trained, root / "models")
    build_index(
        model_dir,
        shop.dataset.items,
        root / "bundle",
        BuildConfig(mode="label_only", index=IndexConfig(factory="Flat")),
        users=shop.dataset.users,
    )
    return root / "bundle"


@pytest.fixture(scope="module")
def searcher(bundle: Path) -> Searcher:
    return Searcher.load(bundle)


@pytest.fixture(scope="module")
def other_bundle(bundle: Path) -> Path:
    """A second build of the same models: ten items fewer (an incremental update saved as a new bundle)."""
    updated = Searcher.load(bundle)
    updated.remove_items(updated.items["item_id"].iloc[:10].tolist())
    out = bundle.parent / "other"
    updated.save(out)
    return out


@dataclass
class Env:
    """What a trigger may use: a fresh folder, and the module's bundle and searcher (built on first use)."""

    tmp: Path
    request: pytest.FixtureRequest
    caplog: pytest.LogCaptureFixture

    @property
    def bundle(self) -> Path:
        return self.request.getfixturevalue("bundle")

    @property
    def other_bundle(self) -> Path:
        return self.request.getfixturevalue("other_bundle")

    @property
    def searcher(self) -> Searcher:
        return self.request.getfixturevalue("searcher")

    def copy_bundle(self) -> Path:
        target = self.tmp / "copy"
        shutil.copytree(self.bundle, target)
        return target

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path


def _events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer": ["u1", "u1", "u2", "u2", "u2"],
            "sku": ["a", "b", "a", "c", "b"],
            "ts": [1, 2, 1, 5, 9],
            "event": [1, 3, 0, 1, 2],
        }
    )


def _catalog() -> pd.DataFrame:
    return pd.DataFrame({"sku": ["a", "b", "c"], "brand": ["acme", "acme", "zen"], "price": [1.5, 3.0, np.nan]})


_SPEC = """name = "bad-input"
[label]
kind = "graded"
min = 0
max = 3
positive_threshold = 1

[interactions]
path = "events{suffix}"
user_id = "customer"
item_id = "sku"
order = "ts"
label = "event"

[items]
path = "catalog{suffix}"
item_id = "sku"
categorical = ["brand"]
numeric = ["price"]
"""


def _tables(
    env: Env,
    *,
    events: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    catalog: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    spec: Callable[[str], str] | None = None,
    fmt: str = "parquet",
) -> Path:
    """A small graded shop as two tables and a spec (edited by the callables); returns the spec's path."""
    suffix = f".{fmt}"
    for name, frame in (
        ("events", (events or (lambda d: d))(_events())),
        ("catalog", (catalog or (lambda d: d))(_catalog())),
    ):
        if fmt == "parquet":
            frame.to_parquet(env.tmp / f"{name}{suffix}")
        else:
            frame.to_csv(env.tmp / f"{name}{suffix}", index=False)
    text = _SPEC.format(suffix=suffix)
    return env.write("spec.toml", (spec or (lambda s: s))(text))


def _set(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return edit


def _load(env: Env, policy: str | None = None, **tables: Any) -> features.Dataset:
    return features.load_dataset(_tables(env, **tables), policy=policy)


@dataclass(frozen=True)
class CliRun:
    code: int
    err: str


def _cli(env: Env, argv: list[str]) -> CliRun:
    """Runs the CLI in-process; argparse's own errors (exit 2) count as a return code."""
    from cascade.cli import main

    capsys = env.request.getfixturevalue("capsys")
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return CliRun(code=code, err=capsys.readouterr().err)


# -- the catalogue ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One kind of bad input (see the module docstring)."""

    id: str
    trigger: Callable[[Env], Any]
    raises: type[BaseException] | None = None
    contains: tuple[str, ...] = ()
    check: Callable[[Any, Env], None] | None = None
    cli: bool = False


def error(id: str, trigger: Callable[[Env], Any], raises: type[BaseException], *contains: str) -> Case:
    return Case(id=id, trigger=trigger, raises=raises, contains=contains)


def result(id: str, trigger: Callable[[Env], Any], check: Callable[[Any, Env], None]) -> Case:
    return Case(id=id, trigger=trigger, check=check)


def cli(id: str, argv: Callable[[Env], list[str]], *contains: str) -> Case:
    return Case(id=id, trigger=lambda env: _cli(env, argv(env)), contains=contains, cli=True)


def _unread_column_is_logged(dataset: features.Dataset, env: Env) -> None:
    assert list(dataset.interactions.columns) == ["user_id", "item_id", "timestamp", "label"]
    assert dataset.report is not None and dataset.report.ok
    messages = [r.getMessage() for r in env.caplog.records if r.name == "features.loaders"]
    assert any("1 column(s) not named by the spec are not read: ['coupon']" in m for m in messages), messages


def _dropped_and_counted(dataset: features.Dataset, env: Env) -> None:
    assert dataset.report.dropped == {"interactions": 1}
    assert [p.kind for p in dataset.report.problems] == ["unknown_item"]
    assert dataset.num_interactions == len(_events()) - 1 and "zzz" not in set(dataset.interactions["item_id"])


def _single_interaction_user(split: features.Split, env: Env) -> None:
    # The tiny shop: users 1 and 3 have >= 3 positive requests (held out), user 2 has two; user 4 has one row.
    report = split.report
    assert (report.users, report.users_held_out, report.users_too_few) == (4, 2, 2)
    assert (split.train["user_id"] == 4).sum() == 1
    assert not (split.validation_pairs["user_id"] == 4).any() and not (split.test_pairs["user_id"] == 4).any()


def _split_with_single_interaction_user(env: Env) -> features.Split:
    dataset = make_tiny_shop()
    row = pd.DataFrame([[4, 12, 600, 3, "ink", 11, "app"]], columns=dataset.interactions.columns)
    dataset.interactions = pd.concat([dataset.interactions, row], ignore_index=True)
    dataset.users = pd.concat(
        [dataset.users, pd.DataFrame({"user_id": [4], "segment": ["b"]})], ignore_index=True
    ).astype({"user_id": np.int64})
    return features.temporal_leave_last_out(features.validate_dataset(dataset))


def _without_timestamp(env: Env) -> features.Dataset:
    ds = make_tiny_shop()
    return features.validate_dataset(replace(ds, interactions=ds.interactions.drop(columns=["timestamp"])))


def _padded_past_the_catalog(results: Any, env: Env) -> None:
    num_items = env.searcher.num_items
    assert num_items < 500
    assert results.item_ids.shape == results.scores.shape == results.slots.shape == (1, 500)
    assert results.valid[0, :num_items].all() and not results.valid[0, num_items:].any()
    assert len(set(results.item_ids[0, :num_items].tolist())) == num_items
    assert (results.item_ids[0, num_items:] == PAD_INT_ID).all() and (results.slots[0, num_items:] == -1).all()
    assert np.isneginf(results.scores[0, num_items:]).all() and np.isfinite(results.scores[0, :num_items]).all()


def _same_results(without: Callable[[Env], Any]) -> Callable[[Any, Env], None]:
    def check(results: Any, env: Env) -> None:
        expected = without(env)
        np.testing.assert_array_equal(results.item_ids, expected.item_ids)
        np.testing.assert_allclose(results.scores, expected.scores, rtol=1e-6)

    return check


def _mixed_build(env: Env, name: str, *, verify_checksums: bool = True) -> Searcher:
    """The bundle with one file taken from another build of the same models."""
    bundle = env.copy_bundle()
    shutil.copy(env.other_bundle / name, bundle / name)
    return Searcher.load(bundle, verify_checksums=verify_checksums)


def _without_manifest(env: Env) -> Searcher:
    bundle = env.copy_bundle()
    (bundle / "manifest.json").unlink()
    return Searcher.load(bundle)


def _new_items(env: Env, ids: list[int]) -> pd.DataFrame:
    rows = env.searcher.items.iloc[: len(ids)].copy()
    rows["item_id"] = ids
    return rows


def _search(env: Env, query: Query | list[Query] | None = None, **kwargs: Any) -> Any:
    return env.searcher.search(Query(user_id=1) if query is None else query, **kwargs)


NAN = float("nan")

CASES: list[Case] = [
    # -- loaders: files described by a spec, validate_dataset, splits -----------------------------------------------
    error(
        "loader/missing_column",
        lambda env: _load(env, events=lambda d: d.drop(columns=["ts"])),
        SpecError,
        "events.parquet",
        "no column(s) ['ts']",
        "it has columns ['customer', 'sku', 'event']",
    ),
    result(
        "loader/extra_column_not_read_and_logged",
        lambda env: _load(env, events=lambda d: d.assign(coupon="XMAS")),
        _unread_column_is_logged,
    ),
    error(
        "loader/wrong_dtype_timestamp",
        lambda env: _load(env, fmt="csv", events=_set("ts", 1, "yesterday")),
        DataValidationError,
        "interactions.timestamp",
        "expected numbers",
        "'yesterday'",
    ),
    error(
        "loader/wrong_dtype_float_ids",
        lambda env: _load(env, events=lambda d: d.assign(sku=[1.5, 2.5, 1.5, 3.5, 2.5])),
        DataValidationError,
        "interactions.item_id",
        "ids should be integers or strings",
        "float64",
    ),
    error(
        "loader/nan_timestamp",
        lambda env: _load(env, fmt="csv", events=_set("ts", 1, NAN)),
        DataValidationError,
        "interactions.timestamp",
        "expected a value in every row",
        "nan",
    ),
    error(
        "loader/inf_price",
        lambda env: _load(env, catalog=_set("price", 0, math.inf)),
        DataValidationError,
        "items.price",
        "expected finite numbers",
        "inf",
    ),
    error(
        "loader/empty_string_item_id",
        lambda env: _load(env, events=_set("sku", 1, "")),
        DataValidationError,
        "interactions.item_id",
        "NaN or empty",
        "''",
    ),
    error(
        "loader/blank_user_id",
        lambda env: _load(env, events=_set("customer", 2, "  ")),
        DataValidationError,
        "interactions.user_id",
        "NaN or empty",
        "'  '",
    ),
    error(
        "loader/unknown_item_id",
        lambda env: _load(env, events=_set("sku", 1, "zzz")),
        DataValidationError,
        "interactions.item_id",
        "not in the item table",
        "'zzz'",
    ),
    result(
        "loader/unknown_item_id_drop_and_report",
        lambda env: _load(env, policy="drop-and-report", events=_set("sku", 1, "zzz")),
        _dropped_and_counted,
    ),
    error(
        "loader/duplicate_item_id",
        lambda env: _load(env, catalog=lambda c: pd.concat([c, c.iloc[:1]], ignore_index=True)),
        DataValidationError,
        "items.item_id",
        "appears more than once",
        "'a'",
    ),
    error(
        "loader/label_out_of_range",
        lambda env: _load(env, events=_set("event", 1, 7)),
        DataValidationError,
        "interactions.label",
        "expected values in [0, 3]",
        "7",
    ),
    error(
        "loader/empty_table",
        lambda env: _load(env, events=lambda d: d.iloc[:0]),
        DataValidationError,
        "interactions.*",
        "expected at least one",
        "no rows",
    ),
    error(
        "loader/empty_csv_file",
        lambda env: (
            _tables(env, fmt="csv"),
            (env.tmp / "events.csv").write_bytes(b""),
            features.load_dataset(env.tmp / "spec.toml"),
        ),
        SpecError,
        "events.csv",
        "is empty",
        "header row with the columns ['customer', 'sku', 'ts', 'event']",
    ),
    error(
        "loader/non_utf8_csv",
        lambda env: (
            _tables(env, fmt="csv"),
            (env.tmp / "catalog.csv").write_bytes("sku,brand,price\na,café,1\nb,x,2\nc,y,3\n".encode("latin-1")),
            features.load_dataset(env.tmp / "spec.toml"),
        ),
        SpecError,
        "catalog.csv",
        "is not valid utf-8",
        "encoding",
    ),
    error(
        "loader/unknown_encoding",
        lambda env: _load(env, fmt="csv", spec=lambda s: s.replace('order = "ts"', 'order = "ts"\nencoding = "utf-9"')),
        SpecError,
        "`interactions.encoding`",
        "a text encoding",
        "encoding='utf-9'",
    ),
    error(
        "loader/missing_table_file",
        lambda env: _load(env, spec=lambda s: s.replace("catalog.parquet", "catalogue.parquet")),
        FileNotFoundError,
        "items file",
        "catalogue.parquet",
        "does not exist",
    ),
    error(
        "loader/read_table_not_parquet",
        lambda env: features.read_table(env.write("t.parquet", "not parquet"), ["sku"], table="items"),
        SpecError,
        "items file",
        "t.parquet",
        "not a readable Parquet file",
    ),
    error(
        "loader/folder_without_data",
        lambda env: features.load_dataset((env.tmp / "shop", (env.tmp / "shop").mkdir())[0]),
        FileNotFoundError,
        "shop holds no spec.toml",
        "u.data",
    ),
    error(
        "loader/validate_missing_column",
        _without_timestamp,
        DataValidationError,
        "interactions.timestamp",
        "the column is missing",
        "found columns ['user_id', 'item_id', 'label'",
    ),
    error(
        "loader/unknown_policy",
        lambda env: features.validate_dataset(make_tiny_shop(), policy="skip"),
        ValueError,
        "`policy`",
        "one of ('error', 'drop-and-report')",
        "policy='skip'",
    ),
    result(
        "loader/user_with_one_interaction",
        _split_with_single_interaction_user,
        _single_interaction_user,
    ),
    # -- dataset specs --------------------------------------------------------------------------------------------
    error(
        "spec/unknown_key",
        lambda env: DatasetSpec.from_toml(_tables(env, spec=lambda s: s.replace('order = "ts"', 'ordr = "ts"'))),
        SpecError,
        "[interactions]",
        "unknown key(s) ['ordr']",
        "expected a subset of",
    ),
    error(
        "spec/wrong_type",
        lambda env: DatasetSpec.from_toml(_tables(env, spec=lambda s: s.replace('["price"]', '"price"'))),
        SpecError,
        "`items.numeric`",
        "should be a list",
        "numeric='price'",
    ),
    error(
        "spec/missing_key",
        lambda env: DatasetSpec.from_toml(_tables(env, spec=lambda s: s.replace('item_id = "sku"\norder', "order"))),
        SpecError,
        "`interactions.item_id` is required",
        "no `item_id`",
    ),
    error(
        "spec/threshold_out_of_label_range",
        lambda env: DatasetSpec.from_toml(
            _tables(env, spec=lambda s: s.replace("positive_threshold = 1", "positive_threshold = 5"))
        ),
        SpecError,
        "`label.positive_threshold`",
        "[label.min, label.max]",
        "positive_threshold=5.0",
    ),
    error(
        "spec/not_toml",
        lambda env: DatasetSpec.from_toml(env.write("spec.toml", "[label\n")),
        SpecError,
        "spec.toml",
        "is not valid TOML",
        "(at line 1, column 7)",
    ),
    error(
        "spec/missing_file",
        lambda env: features.load_dataset(env.tmp / "nope.toml"),
        FileNotFoundError,
        "nope.toml",
        "does not exist",
        "expected a TOML file",
    ),
    # -- configs ------------------------------------------------------------------------------------------------
    error(
        "config/run_unknown_table",
        lambda env: RunConfig.from_toml(env.write("run.toml", "[trian]\nepochs = 1\n")),
        ValueError,
        "run.toml",
        "unknown table(s) ['trian']",
        "expected a subset of",
    ),
    error(
        "config/run_missing_file",
        lambda env: RunConfig.from_toml(env.tmp / "missing.toml"),
        FileNotFoundError,
        "missing.toml",
        "does not exist",
    ),
    error(
        "config/run_not_utf8",
        lambda env: RunConfig.from_toml((env.tmp / "run.toml", (env.tmp / "run.toml").write_bytes(b"# \xff\n"))[0]),
        ValueError,
        "run.toml",
        "is not valid TOML",
        "utf-8",
    ),
    error(
        "config/run_table_wrong_type",
        lambda env: RunConfig.from_toml(env.write("run.toml", "train = 3\n")),
        ValueError,
        "[train]",
        "should be a table",
        "train = 3",
    ),
    error(
        "config/run_negative_epochs",
        lambda env: RunConfig.from_toml(env.write("run.toml", "[train.teacher]\nepochs = -1\n")),
        ValueError,
        "`epochs`",
        "positive integer",
        "epochs=-1",
    ),
    error(
        "config/run_examples_wrong_type",
        lambda env: RunConfig.from_toml(env.write("run.toml", '[examples]\ncount = "many"\n')),
        ValueError,
        "`examples.count`",
        "non-negative integer",
        "count='many'",
    ),
    error(
        "config/run_synthetic_unknown_key",
        lambda env: RunConfig.from_toml(env.write("run.toml", "[synthetic]\nnum_userz = 10\n")),
        ValueError,
        "[synthetic]",
        "unknown key(s) ['num_userz']",
        "num_users",
    ),
    error(
        "config/train_unknown_key",
        lambda env: CascadeConfig.from_dict({"teacher": {"epoch": 1}}),
        ValueError,
        "[config.teacher]",
        "unknown key(s) ['epoch']",
        "'epochs'",
    ),
    error(
        "config/train_wrong_type",
        lambda env: CascadeConfig.from_dict({"teacher": {"epochs": "two"}}),
        ValueError,
        "`config.teacher.epochs`",
        "an integer",
        "epochs='two'",
    ),
    error(
        "config/train_negative_epochs",
        lambda env: CascadeConfig.from_dict({"student": {"epochs": -2}}),
        ValueError,
        "[config.student] `epochs`",
        "positive integer",
        "epochs=-2",
    ),
    error(
        "config/train_modes_not_a_list",
        lambda env: CascadeConfig.from_dict({"modes": "distilled"}),
        ValueError,
        "`config.modes`",
        "a list",
        "modes='distilled'",
    ),
    error(
        "config/build_unknown_key",
        lambda env: BuildConfig.from_dict({"factory": "Flat"}),
        ValueError,
        "unknown key(s) ['factory']",
        "expected a subset of",
        "'index'",
    ),
    error(
        "config/build_wrong_type",
        lambda env: BuildConfig.from_dict({"batch_size": "big"}),
        ValueError,
        "`batch_size`",
        "positive integer",
        "batch_size='big'",
    ),
    error(
        "config/index_negative_nprobe",
        lambda env: BuildConfig.from_dict({"index": {"nprobe": -4}}),
        ValueError,
        "`nprobe`",
        "positive integer or None",
        "nprobe=-4",
    ),
    error(
        "config/evaluate_unknown_key",
        lambda env: EvalConfig.from_dict({"topk": 10}),
        ValueError,
        "[evaluate]",
        "unknown key(s) ['topk']",
        "'final_k'",
    ),
    error(
        "config/evaluate_wrong_type",
        lambda env: EvalConfig.from_dict({"ks": 10}),
        ValueError,
        "`ks`",
        "a list of cut-offs",
        "ks=10",
    ),
    error(
        "config/evaluate_final_k_over_candidates",
        lambda env: EvalConfig.from_dict({"final_k": 500}),
        ValueError,
        "`final_k`",
        "should not exceed num_candidates=200",
        "final_k=500",
    ),
    # -- the command line ------------------------------------------------------------------------------------------
    cli(
        "cli/missing_data_path",
        lambda env: ["train", "--data", str(env.tmp / "no-data"), "--out", str(env.tmp / "out")],
        "no-data",
        "does not exist",
    ),
    cli(
        "cli/evaluate_missing_data_path",
        lambda env: ["evaluate", "--index", str(env.tmp), "--data", str(env.tmp / "no-data"), "--out", str(env.tmp)],
        "no-data",
        "does not exist",
    ),
    cli(
        "cli/nonexistent_config",
        lambda env: ["run", "--config", str(env.tmp / "missing.toml"), "--out", str(env.tmp / "out")],
        "config file",
        "missing.toml",
        "does not exist",
    ),
    cli(
        "cli/config_negative_epochs",
        lambda env: [
            "train",
            "--config",
            str(env.write("t.toml", "[teacher]\nepochs = -1\n")),
            "--out",
            str(env.tmp / "o"),
        ],
        "`epochs`",
        "positive integer",
        "epochs=-1",
    ),
    cli(
        "cli/k_zero",
        lambda env: ["search", "--index", str(env.tmp), "-k", "0"],
        "argument -k",
        "expected a positive integer",
        "received 0",
    ),
    cli(
        "cli/missing_index",
        lambda env: ["search", "--index", str(env.tmp / "no-bundle")],
        "no-bundle",
        "does not exist",
    ),
    cli(
        "cli/filter_without_value",
        lambda env: ["search", "--index", str(env.bundle), "--filter", "price"],
        "`--filter`",
        "FIELD=VALUE",
        "Received: 'price'",
    ),
    cli(
        "cli/filter_not_a_number",
        lambda env: ["search", "--index", str(env.bundle), "--filter", "price=cheap"],
        "`--filter price`",
        "a number or LOW..HIGH",
        "price=cheap",
    ),
    cli(
        "cli/filter_unknown_field",
        lambda env: ["search", "--index", str(env.bundle), "--filter", "colour=red"],
        "`filters`",
        "unknown field 'colour'",
        "filterable fields: [",
    ),
    cli(
        "cli/context_without_value",
        lambda env: ["search", "--index", str(env.bundle), "--context", "device"],
        "`--context`",
        "NAME=VALUE",
        "Received: 'device'",
    ),
    cli(
        "cli/user_id_of_the_wrong_kind",
        lambda env: ["search", "--index", str(env.bundle), "--user", "alice"],
        "`queries[0].user_id`",
        "int id",
        "'alice'",
    ),
    # -- search calls ------------------------------------------------------------------------------------------
    error("search/k_zero", lambda env: _search(env, k=0), ValueError, "`k`", "integer in [1, 100000]", "k=0"),
    error("search/k_not_an_int", lambda env: _search(env, k=2.5), ValueError, "`k`", "an integer", "k=2.5"),
    error("search/k_as_text", lambda env: _search(env, k="10"), ValueError, "`k`", "an integer", "k='10'"),
    error(
        "search/k_over_max_k",
        lambda env: _search(env, k=100_001, num_candidates=100_001),
        ValueError,
        "`k`",
        "[1, 100000]",
        "k=100001",
    ),
    result(
        "search/k_over_catalog_size_is_padded",
        lambda env: _search(env, k=500, num_candidates=500),
        _padded_past_the_catalog,
    ),
    error(
        "search/num_candidates_under_k",
        lambda env: _search(env, k=10, num_candidates=5),
        ValueError,
        "`num_candidates`",
        ">= k",
        "num_candidates=5, k=10",
    ),
    error(
        "search/embeddings_wrong_dimension",
        lambda env: env.searcher.search_embeddings(np.zeros((2, 3), dtype=np.float32)),
        ValueError,
        "`query_embeddings`",
        "[num_queries, 16]",
        "shape=(2, 3)",
    ),
    error(
        "search/embeddings_not_float",
        lambda env: env.searcher.search_embeddings(np.zeros((1, 16), dtype=np.int64)),
        ValueError,
        "`query_embeddings`",
        "float32",
        "dtype=int64",
    ),
    error(
        "search/embeddings_nan",
        lambda env: env.searcher.search_embeddings(np.full((1, 16), np.nan, dtype=np.float32)),
        ValueError,
        "`query_embeddings`",
        "finite",
        "NaN",
    ),
    error(
        "search/filter_unknown_field",
        lambda env: _search(env, filters={"colour": "red"}),
        ValueError,
        "`filters`",
        "unknown field 'colour'",
        "'price'",
    ),
    error(
        "search/filter_numeric_given_text",
        lambda env: _search(env, filters={"price": "cheap"}),
        ValueError,
        "`filters['price']`",
        "a number or a (low, high) range",
        "'cheap'",
    ),
    error(
        "search/filter_categorical_given_a_number",
        lambda env: _search(env, filters={"brand": 5}),
        ValueError,
        "`filters['brand']`",
        "strings like the field's values",
        "Received: 5",
    ),
    error(
        "search/filter_categorical_given_a_mapping",
        lambda env: _search(env, filters={"brand": {"acme": 1}}),
        ValueError,
        "`filters['brand']`",
        "strings",
        "{'acme': 1}",
    ),
    result(
        "search/exclude_unknown_ids_are_ignored",
        lambda env: _search(env, exclude=[999_999, 888_888]),
        _same_results(_search),
    ),
    error(
        "search/exclude_ids_of_the_wrong_kind",
        lambda env: _search(env, exclude=["x"]),
        ValueError,
        "`exclude`",
        "int item ids",
        "['x']",
    ),
    error(
        "search/query_user_id_wrong_type",
        lambda env: _search(env, Query(user_id="alice")),
        ValueError,
        "`queries[0].user_id`",
        "int id",
        "'alice'",
    ),
    error(
        "search/query_text_wrong_type",
        lambda env: _search(env, [Query(user_id=1), Query(user_id=1, text=None)]),  # type: ignore[arg-type]
        ValueError,
        "`queries[1].text`",
        "a string",
        "None",
    ),
    error(
        "search/query_context_not_one_value",
        lambda env: _search(env, Query(user_id=1, context={"device": ["app", "web"]})),
        ValueError,
        "`queries[0].context['device']`",
        "one value",
        "['app', 'web']",
    ),
    error(
        "search/query_numeric_attribute_given_text",
        lambda env: _search(env, Query(user_id=1, user_attributes={"tenure_days": "long"})),
        ValueError,
        "`queries[0].user_attributes['tenure_days']`",
        "a number",
        "'long'",
    ),
    error(
        "search/empty_query_batch",
        lambda env: _search(env, []),
        ValueError,
        "`queries`",
        "at least one query",
        "an empty batch",
    ),
    result(
        "search/nan_numeric_attribute_is_unknown",
        lambda env: _search(env, Query(user_id=1, user_attributes={"tenure_days": NAN})),
        _same_results(lambda env: _search(env, Query(user_id=1, user_attributes={"tenure_days": None}))),
    ),
    result(
        "search/nan_context_is_unknown",
        lambda env: _search(env, Query(user_id=1, context={"hour": NAN})),
        _same_results(lambda env: _search(env, Query(user_id=1))),
    ),
    error(
        "search/add_items_duplicate_ids",
        lambda env: env.searcher.add_items(_new_items(env, [900_001, 900_001])),
        ValueError,
        "`items.item_id`",
        "unique",
        "[900001]",
    ),
    error(
        "search/add_items_already_indexed",
        lambda env: env.searcher.add_items(env.searcher.items.iloc[:1]),
        ValueError,
        "`items.item_id`",
        "new ids",
        "use replace_items",
    ),
    error(
        "search/remove_unknown_ids",
        lambda env: env.searcher.remove_items([999_999]),
        ValueError,
        "`item_ids`",
        "active items of the index",
        "[999999]",
    ),
    error(
        "search/remove_items_given_one_string",
        lambda env: env.searcher.remove_items("17"),  # type: ignore[arg-type]
        ValueError,
        "`item_ids`",
        "a sequence of item ids",
        "'17'",
    ),
    # -- index bundle directories ----------------------------------------------------------------------------------
    error(
        "artifact/file_from_another_build",
        lambda env: _mixed_build(env, "index.faiss"),
        ManifestError,
        "index.faiss has",
        "bytes but manifest.json records",
    ),
    error(
        "artifact/file_from_another_build_sizes_only",
        lambda env: _mixed_build(env, "active.npy", verify_checksums=False),
        ManifestError,
        "active.npy has 110 active entries",
        "manifest items.num_active is 120",
        "mixes files of different builds",
    ),
    error(
        "artifact/missing_manifest",
        _without_manifest,
        FileNotFoundError,
        "manifest.json is missing",
        "not a finished index bundle",
    ),
    error(
        "artifact/missing_directory",
        lambda env: Searcher.load(env.tmp / "no-bundle"),
        FileNotFoundError,
        "no-bundle",
        "does not exist",
    ),
]


# -- the test ---------------------------------------------------------------------------------------------------


def test_the_catalogue_is_large_and_its_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 34
    assert {case.id.split("/")[0] for case in CASES} == {"loader", "spec", "config", "cli", "search", "artifact"}


def _assert_ours(error: BaseException) -> None:
    """A caller's mistake surfaces as one of our errors with a readable message, not a library's internals."""
    kind = type(error)
    assert kind in _PLAIN_ERRORS or (kind.__module__.startswith(_OWN_PACKAGES) and issubclass(kind, _PLAIN_ERRORS)), (
        f"{kind.__module__}.{kind.__qualname__} is not one of Cascade's errors"
    )
    assert not isinstance(error, KeyError | IndexError | UnicodeError)
    message = str(error)
    for marker in RAW_MARKERS:
        assert marker not in message


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest, caplog) -> None:
    caplog.set_level(logging.INFO, logger="features.loaders")
    env = Env(tmp=tmp_path, request=request, caplog=caplog)
    if case.cli:
        run = case.trigger(env)
        assert run.code != 0
        assert "Traceback" not in run.err
        lines = [line for line in run.err.splitlines() if line.strip()]
        assert lines and "error:" in lines[-1], run.err
        if not lines[0].startswith("usage:"):  # argparse's own errors print the usage first
            assert len(lines) == 1, run.err
        for part in case.contains:
            assert part in lines[-1], f"{part!r} not in {lines[-1]!r}"
        return
    if case.raises is None:
        assert case.check is not None
        case.check(case.trigger(env), env)
        return
    with pytest.raises(case.raises) as info:
        case.trigger(env)
    _assert_ours(info.value)
    for part in case.contains:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"
