import json

import numpy as np
import pytest

from vaectl import validate
from vaectl.params import ValidateParams

from .conftest import synthetic_digits, write_prepared


def good_splits():
    return {
        "train": synthetic_digits(30, seed=1),
        "val": synthetic_digits(5, seed=2),
        "test": synthetic_digits(5, seed=3),
    }


def test_good_data_passes_and_writes_report_and_docs(tmp_path, prepared):
    outcome = validate.run(ValidateParams(), prepared, tmp_path / "r" / "v.json", tmp_path / "docs")
    assert outcome.success, outcome.failures
    report = json.loads((tmp_path / "r" / "v.json").read_text())
    assert report["success"] and report["expectations_failed"] == 0
    assert report["expectations_evaluated"] == 31
    assert (tmp_path / "docs" / "index.html").exists()
    again = validate.run(ValidateParams(), prepared, tmp_path / "r" / "v.json", tmp_path / "docs")
    assert again.success  # a rerun does not trip over "already exists"


def _relabel(s):
    images, labels = s["test"]
    s["test"] = (images, np.where(labels == 3, 12, labels).astype(np.uint8))


def _float_with_nan(s):
    images, labels = s["val"]
    images = images.astype(np.float32)
    images[0, 0, 0] = np.nan
    s["val"] = (images, labels)


def _too_bright(s):
    images, labels = s["test"]
    s["test"] = (images.astype(np.int16) + 300, labels)


def _wrong_shape(s):
    images, labels = s["val"]
    s["val"] = (images[:, :, :27], labels)


def _leak(s):
    s["test"][0][0] = s["train"][0][17]


def _drift(s):
    images, labels = s["test"]
    s["test"] = (np.maximum(images, 200).astype(np.uint8), labels)


def _imbalance(s):
    images, labels = s["val"]
    s["val"] = (images, np.where(labels < 5, 0, labels).astype(np.uint8))


@pytest.mark.parametrize("breaker, table, expectation, column", [
    (_relabel, "test_images", "expect_column_values_to_be_in_set", "label"),
    (_float_with_nan, "val_images", "expect_column_values_to_not_be_null", "pixel_mean"),
    (_float_with_nan, "val_images", "expect_column_values_to_be_in_set", "dtype"),
    (_too_bright, "test_images", "expect_column_values_to_be_between", "pixel_max"),
    (_wrong_shape, "val_images", "expect_column_values_to_be_in_set", "shape"),
    (_leak, "leakage", "expect_column_values_to_be_unique", "image_hash"),
    (_drift, "splits", "expect_column_values_to_be_between", "mean_intensity"),
    (_imbalance, "splits", "expect_column_values_to_be_between", "max_class_share"),
])
def test_each_expectation_catches_a_broken_dataset(tmp_path, breaker, table, expectation, column):
    splits = good_splits()
    breaker(splits)
    prepared = write_prepared(tmp_path / "prepared", splits)
    outcome = validate.run(ValidateParams(), prepared, tmp_path / "v.json", tmp_path / "docs")
    assert not outcome.success
    failed = [e for e in outcome.report["tables"][table]["expectations"] if not e["success"]]
    assert any(e["expectation"] == expectation and e["kwargs"].get("column") == column
               for e in failed), failed
    assert any(line.startswith(f"{table}: {expectation}") for line in outcome.failures)


def test_row_counts_are_checked_against_the_manifest(tmp_path, prepared):
    images, labels = np.load(prepared / "val.npz").values()
    np.savez(prepared / "val.npz", images=images[:-1], labels=labels[:-1])
    outcome = validate.run(ValidateParams(), prepared, tmp_path / "v.json", tmp_path / "docs")
    failed = [e for e in outcome.report["tables"]["val_images"]["expectations"] if not e["success"]]
    assert [e["expectation"] for e in failed] == ["expect_table_row_count_to_equal"]
    assert failed[0]["result"]["observed_value"] == 49


def test_min_rows(tmp_path, prepared):
    outcome = validate.run(ValidateParams(min_rows=100), prepared, tmp_path / "v.json", tmp_path / "d")
    assert {line.split(":")[0] for line in outcome.failures} == {"val_images", "test_images"}
