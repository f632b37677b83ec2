import json
import re

import numpy as np
import pytest

from vaectl import UserError, validate
from vaectl.params import ValidateParams

from .conftest import synthetic_digits, write_prepared


@pytest.fixture(autouse=True)
def store(local_store):
    """validate records its report's sha256 on an MLflow run: each test gets its own store."""
    return local_store


def run_validate(*args):
    return validate.run(*args, "vaectl")


def good_splits():
    return {
        "train": synthetic_digits(30, seed=1),
        "val": synthetic_digits(5, seed=2),
        "test": synthetic_digits(5, seed=3),
    }


def test_good_data_passes_and_writes_report_and_docs(tmp_path, prepared):
    outcome = run_validate(ValidateParams(), prepared, tmp_path / "r" / "v.json", tmp_path / "docs")
    assert outcome.success, outcome.failures
    report = json.loads((tmp_path / "r" / "v.json").read_text())
    assert report["success"] and report["expectations_failed"] == 0
    assert report["expectations_evaluated"] == 31
    assert (tmp_path / "docs" / "index.html").exists()
    # offline, each page points at the offline page beside the site (reports/index.html)
    pointer = re.compile(r'CDNs\. Offline, .*?<a href="([^"]+)">reports/index\.html')
    pages = {p: pointer.search(p.read_text()) for p in (tmp_path / "docs").rglob("*.html")}
    assert len(pages) > 3 and all(pages.values())
    assert {(p.parent / m.group(1)).resolve() for p, m in pages.items() if m} == {tmp_path / "index.html"}
    again = run_validate(ValidateParams(), prepared, tmp_path / "r" / "v.json", tmp_path / "docs")
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


@pytest.mark.parametrize(
    "breaker, table, expectation, column",
    [
        (_relabel, "test_images", "expect_column_values_to_be_in_set", "label"),
        (_float_with_nan, "val_images", "expect_column_values_to_not_be_null", "pixel_mean"),
        (_float_with_nan, "val_images", "expect_column_values_to_be_in_set", "dtype"),
        (_too_bright, "test_images", "expect_column_values_to_be_between", "pixel_max"),
        (_wrong_shape, "val_images", "expect_column_values_to_be_in_set", "shape"),
        (_leak, "leakage", "expect_column_values_to_be_unique", "image_hash"),
        (_drift, "splits", "expect_column_values_to_be_between", "mean_intensity"),
        (_imbalance, "splits", "expect_column_values_to_be_between", "max_class_share"),
    ],
)
def test_each_expectation_catches_a_broken_dataset(tmp_path, breaker, table, expectation, column):
    splits = good_splits()
    breaker(splits)
    prepared = write_prepared(tmp_path / "prepared", splits)
    outcome = run_validate(ValidateParams(), prepared, tmp_path / "v.json", tmp_path / "docs")
    assert not outcome.success
    failed = [e for e in outcome.report["tables"][table]["expectations"] if not e["success"]]
    assert any(e["expectation"] == expectation and e["kwargs"].get("column") == column for e in failed), (
        failed
    )
    assert any(line.startswith(f"{table}: {expectation}") for line in outcome.failures)


def test_prepared_data_changed_after_fetch_is_refused(tmp_path, prepared):
    """An 8x8 patch flipped in one train image and one label changed: every stage reads
    through load_split, which checks the arrays against the manifest."""
    from vaectl.data import load_split

    images, labels = load_split(prepared, "train")
    images, labels = images.copy(), labels.copy()
    images[3, 10:18, 10:18] = 255 - images[3, 10:18, 10:18]
    labels[7] = (labels[7] + 1) % 10
    np.savez(prepared / "train.npz", images=images, labels=labels)
    with pytest.raises(
        UserError,
        match=r"train.npz does not match manifest.json \(class_counts, "
        r"images_sha256, labels_sha256 differ\)",
    ):
        run_validate(ValidateParams(), prepared, tmp_path / "v.json", tmp_path / "docs")
    assert not (tmp_path / "v.json").exists()


def test_a_manifest_edited_by_hand_is_refused(tmp_path, prepared):
    """Changing a recorded hash so that it matches tampered data does not pass either."""
    manifest = prepared / "manifest.json"
    text = manifest.read_text()
    doc = json.loads(text)
    digest = doc["splits"]["val"]["images_sha256"]
    manifest.write_text(text.replace(digest, "0" * 64))
    with pytest.raises(UserError, match="manifest.json was edited after `vaectl fetch`"):
        run_validate(ValidateParams(), prepared, tmp_path / "v.json", tmp_path / "docs")


def test_min_rows(tmp_path, prepared):
    outcome = run_validate(ValidateParams(min_rows=100), prepared, tmp_path / "v.json", tmp_path / "d")
    assert {line.split(":")[0] for line in outcome.failures} == {"val_images", "test_images"}
