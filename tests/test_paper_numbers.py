"""Published numbers in results/paper/*.csv: schema, COOKIE's recalled values, derived RSUM."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis.paper import (
    COLUMNS,
    STATUS_ORDER,
    default_paper_dir,
    load_paper_numbers,
    paper_rsum,
    weakest_status,
)

# COOKIE row of COTS Table 1 as recalled in docs/paper-sources.md section 6.2.
COOKIE_RECALLED = {
    ("flickr30k", "finetuned_1k"): {"i2t": (89.0, 98.9, 99.7), "t2i": (75.6, 94.6, 97.2)},
    ("coco", "finetuned_5k"): {"i2t": (71.6, 90.9, 95.4), "t2i": (54.5, 81.0, 88.2)},
}


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_numbers()


def test_default_dir_is_repo_results_paper() -> None:
    here = Path(__file__).resolve().parents[1] / "results" / "paper"
    assert default_paper_dir() == here
    assert {p.name for p in here.glob("*.csv")} >= {"cookie.csv", "peers.csv"}


def test_shipped_csvs_load_and_validate(paper: pd.DataFrame) -> None:
    assert list(paper.columns) == list(COLUMNS)
    assert len(paper) > 0
    assert set(paper["status"]) <= set(STATUS_ORDER)
    recall = paper[paper["direction"].isin(["i2t", "t2i"])]
    assert recall["value"].between(0, 100).all()
    assert set(recall["k"].astype(int)) <= {1, 5, 10}
    assert set(recall["split"]) == {"karpathy_test"}
    assert set(recall["dataset"]) <= {"flickr30k", "coco"}
    assert not paper.duplicated(["table", "model", "dataset", "protocol", "direction", "k"]).any()


def test_every_status_is_known(paper: pd.DataFrame) -> None:
    assert paper["status"].isin(["sourced", "recalled", "assumed"]).all()
    assert paper["source"].str.strip().ne("").all()


def test_cookie_recalled_values_match_note(paper: pd.DataFrame) -> None:
    cookie = paper[(paper["model"] == "COOKIE") & (paper["table"] == "table2")]
    assert len(cookie) == 12
    assert set(cookie["status"]) == {"recalled"}
    assert set(cookie["pretrain_pairs"]) == {5_900_000}
    for (dataset, protocol), by_dir in COOKIE_RECALLED.items():
        for direction, values in by_dir.items():
            for k, expected in zip((1, 5, 10), values, strict=True):
                hit = cookie[(cookie["dataset"] == dataset) & (cookie["protocol"] == protocol)
                             & (cookie["direction"] == direction) & (cookie["k"] == k)]
                assert hit["value"].tolist() == [expected], (dataset, direction, k)


def test_cookie_spot_values(paper: pd.DataFrame) -> None:
    def one(dataset: str, direction: str, k: int) -> float:
        sel = paper[(paper["model"] == "COOKIE") & (paper["dataset"] == dataset)
                    & (paper["direction"] == direction) & (paper["k"] == k)]
        assert len(sel) == 1
        return float(sel["value"].iloc[0])

    assert one("flickr30k", "i2t", 1) == 89.0
    assert one("coco", "t2i", 10) == 88.2


def test_cookie_claims(paper: pd.DataFrame) -> None:
    claims = paper[(paper["table"] == "claims") & (paper["model"] == "COOKIE")]
    got = dict(zip(claims["direction"], claims["value"], strict=True))
    assert got == {"inference_time_ratio": 0.003, "image_retrieval_delta": 5.7,
                   "text_matching_delta": 3.9}
    assert set(claims["status"]) == {"sourced"}
    assert claims["k"].isna().all()


def test_cookie_rsum(paper: pd.DataFrame) -> None:
    rs = paper_rsum(paper)
    cookie = rs[rs["model"] == "COOKIE"].set_index("dataset")
    assert cookie.loc["flickr30k", "rsum"] == pytest.approx(555.0)
    assert cookie.loc["coco", "rsum"] == pytest.approx(481.6)
    assert set(cookie["status"]) == {"recalled"}
    assert set(cookie["protocol"]) == {"finetuned_1k", "finetuned_5k"}


def test_rsum_needs_all_six_and_takes_weakest_status(paper: pd.DataFrame) -> None:
    rs = paper_rsum(paper)
    keys = set(zip(rs["model"], rs["dataset"], rs["protocol"], strict=True))
    # VSE-inf WSL grid on Flickr30K lacks R@10 in the note: no RSUM may be derived.
    assert ("VSEinf-WSL-grid", "flickr30k", "finetuned_1k") not in keys
    assert ("UNITER-large", "coco", "finetuned_5k") in keys
    ldot = rs[(rs["model"] == "LightningDOT") & (rs["dataset"] == "coco")]
    assert ldot["status"].tolist() == ["recalled"]  # sourced R@1 mixed with recalled R@5/10
    uniter = rs[(rs["model"] == "UNITER-large") & (rs["dataset"] == "coco")]
    assert uniter["status"].tolist() == ["sourced"]
    assert not rs["table"].eq("claims").any()


def test_weakest_status_order() -> None:
    assert weakest_status(["sourced", "recalled"]) == "recalled"
    assert weakest_status(["sourced", "assumed", "recalled"]) == "assumed"
    assert weakest_status(["sourced"]) == "sourced"


# ---------------------------------------------------------------- malformed inputs

GOOD = {
    "table": "table2", "model": "M", "dataset": "coco", "split": "karpathy_test",
    "protocol": "finetuned_5k", "direction": "i2t", "k": "1", "value": "50.0",
    "pretrain_pairs": "", "source": "test", "status": "sourced",
}


def _write(path: Path, rows: list[dict[str, str]], header: list[str] | None = None) -> Path:
    header = header or list(COLUMNS)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _bad(bad: dict[str, str]) -> list[dict[str, str]]:
    """Two good rows then the bad one, so the error must point at data row 3."""
    ok2 = {**GOOD, "k": "5"}
    return [GOOD, ok2, {**GOOD, "k": "10", **bad}]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"status": "verified"}, "status 'verified'"),
        ({"value": "140"}, "[0, 100]"),
        ({"value": "abc"}, "must be a number"),
        ({"direction": "image retrieval"}, "direction 'image retrieval'"),
        ({"k": "20"}, "k must be one of"),
        ({"k": ""}, "k must be an integer"),
        ({"dataset": ""}, "'dataset' is empty"),
        ({"source": ""}, "'source' is empty"),
        ({"pretrain_pairs": "5.9M"}, "pretrain_pairs must be an integer"),
    ],
)
def test_bad_row_names_file_and_row(tmp_path: Path, bad: dict[str, str], message: str) -> None:
    path = _write(tmp_path / "broken.csv", _bad(bad))
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_paper_numbers(tmp_path)
    assert str(path) in str(err.value)
    assert "row 3 (line 4)" in str(err.value)


def test_claim_row_with_k_is_rejected(tmp_path: Path) -> None:
    claim = {**GOOD, "table": "claims", "direction": "text_matching_delta", "k": "1"}
    path = _write(tmp_path / "claims.csv", [claim])
    with pytest.raises(ValueError, match="k must be empty") as err:
        load_paper_numbers(tmp_path)
    assert f"{path}: row 1" in str(err.value)


@pytest.mark.parametrize(
    "header",
    [
        [c if c != "status" else "provenance" for c in COLUMNS],  # renamed column
        [*COLUMNS, "notes"],  # extra column
        [c for c in COLUMNS if c != "split"],  # missing column
    ],
)
def test_bad_header_names_file(tmp_path: Path, header: list[str]) -> None:
    path = _write(tmp_path / "hdr.csv", [GOOD], header=header)
    with pytest.raises(ValueError, match="columns must be exactly") as err:
        load_paper_numbers(tmp_path)
    assert str(path) in str(err.value)
    assert "line 1" in str(err.value)


def test_duplicate_key_within_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "dup.csv", [GOOD, {**GOOD, "k": "5"}, {**GOOD, "value": "51.0"}])
    with pytest.raises(ValueError, match="duplicate key") as err:
        load_paper_numbers(tmp_path)
    msg = str(err.value)
    assert f"{path}: row 3" in msg and f"{path}: row 1" in msg


def test_duplicate_key_across_files(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.csv", [GOOD])
    second = _write(tmp_path / "b.csv", [{**GOOD, "status": "recalled"}])
    with pytest.raises(ValueError, match="duplicate key") as err:
        load_paper_numbers(tmp_path)
    msg = str(err.value)
    assert f"{second}: row 1" in msg and str(first) in msg


def test_ragged_row_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text(",".join(COLUMNS) + "\n" + "table2,M,coco\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected 11 fields") as err:
        load_paper_numbers(tmp_path)
    assert f"{path}: row 1" in str(err.value)


def test_empty_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_paper_numbers(tmp_path)


def test_valid_temp_dir_loads_typed(tmp_path: Path) -> None:
    rows = [{**GOOD, "direction": d, "k": str(k), "value": str(10.0 * k), "status": s,
             "pretrain_pairs": "1000"}
            for d, s in (("i2t", "sourced"), ("t2i", "assumed")) for k in (1, 5, 10)]
    _write(tmp_path / "ok.csv", rows)
    df = load_paper_numbers(tmp_path)
    assert str(df["k"].dtype) == "Int64" and df["value"].dtype == float
    rs = paper_rsum(df)
    assert rs["rsum"].tolist() == [pytest.approx(320.0)]
    assert rs["status"].tolist() == ["assumed"]
    assert rs["pretrain_pairs"].tolist() == [1000]
