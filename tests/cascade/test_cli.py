"""The CLI, called in-process: `main([...])` with real data and temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cascade.cli import main


def test_inspect_movielens_prints_counts_types_and_coverage(movielens_dir: Path, capsys) -> None:
    assert main(["data", "inspect", str(movielens_dir)]) == 0
    out = capsys.readouterr().out
    assert "943" in out and "1682" in out and "100000" in out
    assert "label (rating)" in out and "problems found: none" in out
    assert "zip_region" in out and "coverage" in out


def test_inspect_json_is_machine_readable(amazon_dir: Path, capsys) -> None:
    assert main(["data", "inspect", str(amazon_dir), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["summary"]["interactions"] == 53_258
    columns = {c["name"]: c for c in description["tables"]["items"]["columns"]}
    assert columns["category_leaf"]["distinct"] == 283
    assert columns["brand"]["coverage"] == pytest.approx(1935 / 2420)


def test_inspect_lists_problems_and_what_was_dropped(tmp_path: Path, capsys) -> None:
    pd.DataFrame({"u": [1, 1, 2], "i": [1, 9, 2], "t": [1, 2, 3]}).to_csv(tmp_path / "events.csv", index=False)
    pd.DataFrame({"i": [1, 2, 2]}).to_csv(tmp_path / "items.csv", index=False)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[interactions]\npath = "events.csv"\nuser_id = "u"\nitem_id = "i"\norder = "t"\n'
        '[items]\npath = "items.csv"\nitem_id = "i"\n'
    )
    assert main(["data", "inspect", "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "problems found: 2" in out
    assert "items.item_id [duplicate_id]" in out and "interactions.item_id [unknown_item]" in out
    assert "dropped rows: items=1, interactions=1" in out
    assert main(["data", "inspect", "--spec", str(spec), "--policy", "error"]) == 1
    assert "data validation failed" in capsys.readouterr().err


def test_inspect_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["data", "inspect"]) == 2
    assert "give a data PATH or --spec FILE" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert "holds no spec.toml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "--out", str(tmp_path / "x"), "--items", "0"])
    assert info.value.code == 2
    assert "expected a positive integer, received 0" in capsys.readouterr().err


def test_synth_writes_a_shop_that_inspect_and_the_loader_read(tmp_path: Path, capsys) -> None:
    out = tmp_path / "shop"
    args = ["data", "synth", "--out", str(out), "--users", "120", "--items", "80", "--interactions", "3000"]
    assert main([*args, "--seed", "5"]) == 0
    assert "wrote synthetic shop (120 users, 80 items, 3000 interactions)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "interactions.parquet",
        "items.parquet",
        "spec.toml",
        "truth",
        "users.parquet",
    ]
    assert main(["data", "inspect", str(out), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["summary"]["interactions"] == 3000 and description["validation"]["problems"] == []
    # Writing again refuses to overwrite; --overwrite replaces it.
    assert main([*args, "--seed", "6"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--seed", "6", "--overwrite"]) == 0
