"""The chain of custody: every file one stage hands to the next is checked against the sha256
that the MLflow run which wrote it recorded, before anything of it is used.

Threat model (docs/reliability.md): anyone who can write files in the workspace (a script, a
bad merge, a stale copy) can replace a checkpoint, a report or an export; they are not assumed
to write the tracking store. The store is the record: a file whose digest no run of its writer
recorded is refused with one line naming the file, the stage that writes it and the fix.
Someone who can also write the store (or the tracking server's database) can forge records;
that is outside what this checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vaectl import UserError
from vaectl.files import folder_sha256, sha256_file


@dataclass(frozen=True)
class Record:
    """A file some stage writes: the run tag that holds its sha256, the command that writes it,
    and how to get a genuine one back."""

    tag: str
    writer: str
    fix: str


RETRAIN = "`dvc checkout` it or train again (`dvc repro -f train@KIND`)"
REEVALUATE = "`dvc checkout` it or `dvc repro -f evaluate`"

# written by `vaectl train` (run tags vaectl.kind = vae | ae, and the model's name: a checkpoint
# is bound to the name it was trained under, so another model's genuine files are refused)
MODEL_NAME = "vaectl.model_name"
CHECKPOINT = Record("vaectl.checkpoint_sha256", "vaectl train", RETRAIN)
LOGGED_MODEL = "vaectl.logged_model_id"  # the run's MLflow LoggedModel (best.pt, its settings)
LAST_CHECKPOINT = Record("vaectl.last_checkpoint_sha256", "vaectl train", "train again without --resume")
TRAINING_SUMMARY = Record("vaectl.summary_sha256", "vaectl train", RETRAIN)
CURVES = Record("vaectl.curves_sha256", "vaectl train", RETRAIN)
# written by `vaectl classifier` (kind classifier)
CLASSIFIER = Record(
    "vaectl.classifier_sha256", "vaectl classifier", "`dvc checkout` it or `dvc repro -f classifier`"
)
# written by `vaectl evaluate` (kind evaluate); it also records what it scored
METRICS = Record("vaectl.metrics_sha256", "vaectl evaluate", REEVALUATE)
EVALUATE_SUMMARY = Record("vaectl.summary_json_sha256", "vaectl evaluate", REEVALUATE)
SCORED = {"vae": "vaectl.scored_vae_sha256", "ae": "vaectl.scored_ae_sha256"}  # their best.pt
SCORED_CLASSIFIER = "vaectl.scored_classifier_sha256"
# the names of the models an evaluate, holes or ood run scored, as `--model` / `--baseline` named them
SCORED_NAMES = {"vae": "vaectl.vae_name", "ae": "vaectl.ae_name"}
FIGURES_TAG = "vaectl.figures_sha256"  # the sha256 of a figure folder's listing (files.folder_sha256)
EVALUATE_FIGURES = Record(FIGURES_TAG, "vaectl evaluate", REEVALUATE)
# written by `vaectl ood` (kind ood)
OOD_REPORT = Record("vaectl.ood_sha256", "vaectl ood", "`dvc checkout` it or `dvc repro -f ood`")
OOD_FIGURES = Record(FIGURES_TAG, "vaectl ood", OOD_REPORT.fix)
# written by `vaectl holes` (kind holes) and `vaectl validate` (kind validate)
HOLES_REPORT = Record("vaectl.holes_sha256", "vaectl holes", "`dvc checkout` it or `dvc repro -f holes`")
HOLES_FIGURES = Record(FIGURES_TAG, "vaectl holes", HOLES_REPORT.fix)
VALIDATION = Record(
    "vaectl.validation_sha256", "vaectl validate", "`dvc checkout` it or `dvc repro -f validate`"
)
# written by `vaectl export` (kind export-KIND): the digest of checksums.json lives here,
# outside the export folder, with the evaluate run whose numbers the model card carries
CHECKSUMS = Record(
    "vaectl.checksums_sha256", "vaectl export", "`dvc checkout export` or `dvc repro -f export`"
)
EXPORTED_CHECKPOINT = "vaectl.exported_checkpoint_sha256"
EVALUATE_RUN = "vaectl.evaluate_run_id"


def fix_for(record: Record, kind: str) -> str:
    return record.fix.replace("KIND", kind)


def scored_names(vae: str, ae: str) -> dict[str, str]:
    """The tags that say a run scored the models named `vae` and `ae`."""
    return {SCORED_NAMES["vae"]: vae, SCORED_NAMES["ae"]: ae}


def digest(path: Path, record: Record, kind: str) -> str:
    """The sha256 of the file, or of the folder's listing, at `path`: a missing one or a link
    (which would vouch for what it points at) is one line naming the writer."""
    path = Path(path)
    if path.is_symlink() or not (path.is_file() or path.is_dir()):
        what = "a link" if path.is_symlink() else "not found"
        raise UserError(f"{path} is {what}; it is written by `{record.writer}` ({fix_for(record, kind)})")
    return sha256_file(path) if path.is_file() else folder_sha256(path)


def recorded_run(
    path: Path, record: Record, experiment: str, kind: str, also: dict[str, str] | None = None, why: str = ""
) -> tuple[str, dict]:
    """(run id, its tags) of the newest run of `kind` that recorded `path`'s current sha256
    under `record.tag` (and carries the tags `also`); a missing file or a digest no such run
    recorded is a UserError (`why` says what `also` asks for)."""
    from vaectl import tracking

    path = Path(path)
    digest_now = digest(path, record, kind)
    found = tracking.latest_run(experiment, {record.tag: digest_now, "vaectl.kind": kind, **(also or {})})
    if found is None:
        raise UserError(
            f"{path} (sha256 {digest_now[:12]}…) is not what any `{record.writer}` run "
            f"of {kind}{why} recorded in the tracking store {tracking.tracking_uri()}: "
            f"it was changed or replaced after it was written; {fix_for(record, kind)}"
        )
    return found


def check_sibling(path: Path, record: Record, run_id: str, tags: dict, kind: str) -> str:
    """`path`'s sha256, which must be the one run `run_id` recorded under `record.tag` (a file
    written together with the one that found the run)."""
    digest_now = digest(path, record, kind)
    if tags.get(record.tag) != digest_now:
        raise UserError(
            f"{path} (sha256 {digest_now[:12]}…) is not what MLflow run {run_id} of "
            f"`{record.writer}` wrote beside it; {fix_for(record, kind)}"
        )
    return digest_now
