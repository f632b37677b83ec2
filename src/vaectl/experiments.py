"""`vaectl exps` (`make exps`): DVC experiments as one compact table, readable at 120 columns.

`dvc exp show` gives every param and metric a column, and below ~300 columns each collapses to
"…". This reads the same document (`dvc exp show --json`) and keeps what tells experiments
apart: each one's params that differ from its baseline commit, one cell, and the headline of
reports/summary.json (the DVC metric evaluate writes), a column a number.
"""

from __future__ import annotations

import json

from vaectl.params import flatten
from vaectl.pipeline import dvc

SUMMARY = "reports/summary.json"
# summary.json's headline as columns: (flattened key, header); other keys get their own name
COLUMNS = (
    ("vae.iw_nll", "IW-NLL"),
    ("vae.neg_elbo", "−ELBO"),
    ("vae.active_units", "AU"),
    ("vae.recon_bce", "BCE vae"),
    ("ae.recon_bce", "BCE ae"),
)
VERDICTS = ("vae_better", "ae_better", "equivalent", "inconclusive")  # summary.json's comparisons
VERDICT_KEYS = tuple(f"comparisons.{v}" for v in VERDICTS)  # the same, flattened
VERDICTS_HEADER = "VAE/AE/≈/?"
SHOW_TIMEOUT_S = 300


def shown() -> list[dict]:
    """`dvc exp show --json` of the repository here, or one line why not."""
    return json.loads(dvc("exp", "show", "--json", timeout_s=SHOW_TIMEOUT_S) or "[]")


def _params(data: dict) -> dict[str, object]:
    files = (data.get("params") or {}).values()
    return {k: v for file in files for k, v in flatten(file.get("data") or {}).items()}


def _short(rev: object) -> str:
    """A commit's short hash; `workspace` as it is."""
    return str(rev) if rev == "workspace" else str(rev or "")[:7]


def _headline(data: dict) -> dict[str, object]:
    return flatten(((data.get("metrics") or {}).get(SUMMARY) or {}).get("data") or {})


def rows(document: list[dict]) -> list[dict]:
    """One row a commit and a row an experiment under it: {name, changed (param=value, its
    baseline's params aside), headline (flattened summary.json)}."""
    found = []
    for commit in document:
        data = commit.get("data") or {}
        base = _params(data)
        name = commit.get("name") or _short(commit.get("rev"))
        found.append({"name": name, "changed": "", "headline": _headline(data)})
        for exp in commit.get("experiments") or []:
            for rev in (exp.get("revs") or [])[:1]:
                exp_data = rev.get("data") or {}
                params = _params(exp_data)
                changed = [f"{k}={params[k]}" for k in sorted(params) if params[k] != base.get(k)]
                label = f"  {rev.get('name') or exp.get('name') or _short(rev.get('rev'))}"
                found.append({"name": label, "changed": " ".join(changed), "headline": _headline(exp_data)})
    return found


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def table(found: list[dict], width: int):
    """The rows as a rich Table that fits `width` columns: names and numbers whole, the
    changed params folded into the space left."""
    from rich.table import Table

    extra = sorted({k for r in found for k in r["headline"]} - {k for k, _ in COLUMNS} - set(VERDICT_KEYS))
    grid = Table(width=width, show_edge=False, pad_edge=False, title="DVC experiments (dvc exp show)")
    grid.add_column("experiment", no_wrap=True)
    grid.add_column("changed params", overflow="fold", ratio=1)
    for _, header in (*COLUMNS, *((k, k) for k in extra)):
        grid.add_column(header, justify="right", no_wrap=True)
    grid.add_column(VERDICTS_HEADER, justify="right", no_wrap=True)
    for row in found:
        numbers = [_number(row["headline"].get(k)) for k, _ in COLUMNS] + [
            _number(row["headline"].get(k)) for k in extra
        ]
        counts = [row["headline"].get(k) for k in VERDICT_KEYS]
        verdicts = "/".join(str(c) for c in counts) if all(c is not None for c in counts) else ""
        grid.add_row(row["name"], row["changed"], *numbers, verdicts)
    return grid
