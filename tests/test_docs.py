"""The README and docs/ link to each other and to the code: every relative link must reach a
file, and every #anchor a heading of the page it names."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def headings(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (outside code blocks)."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in headings(dest):
            broken.append(target)
    assert not broken, broken


def test_the_readme_is_one_screen_of_entry_with_docs_behind_it():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} <= set(links(REPO / "README.md"))


def test_the_readme_headline_is_what_the_full_study_measured():
    """Each study number the README's headline states, formatted from reports/study-full/
    study.json (the default setting, beta 1 at 20 dimensions) with its verdict word: a rerun
    of the study that moves a number or flips a verdict fails here until the README says so."""
    import json

    study = json.loads((REPO / "reports" / "study-full" / "study.json").read_text())
    row = next(s for s in study["settings"] if s["beta"] == 1.0 and s["latent_dim"] == 20)
    m, verdict = row["metrics"], {name: v["verdict"] for name, v in row["verdicts"].items()}

    def cell(key: str, scale: float = 1.0, digits: int = 1, sign: str = "", unit: str = "") -> str:
        mean, (low, high) = m[key]["mean"] * scale, m[key]["ci"]
        low, high = (f"{v * scale:{sign}.{digits}f}{unit}" for v in (low, high))
        return f"{mean:{sign}.{digits}f}{unit} [{low}, {high}]"

    claims = [
        cell("samples.unrecognised.vae", 100, unit="%"),
        cell("standard_normal.unrecognised.ae", 100, unit="%"),
        f"{cell('standard_normal.unrecognised.difference', 100, sign='+').replace(' [', ' points [', 1)}"
        f" (**{verdict['standard_normal.unrecognised']}**)",
        f"{cell('samples.unrecognised.difference', 100, sign='+').replace(' [', ' points [', 1)}"
        f" (**{verdict['samples.unrecognised']}**",
        f"{cell('recon_bce.ratio', digits=2)}, {cell('recon_bce.difference', sign='+')} nats "
        f"(**{verdict['recon_bce']}**)",
        f"{cell('same_class.ppl_normalized.ratio', digits=3)} within a class and "
        f"{cell('diff_class.ppl_normalized.ratio', digits=3)} across classes",
        cell("vae.iw_nll"),
    ]
    assert verdict["same_class.ppl_normalized"] == verdict["diff_class.ppl_normalized"] == "better"
    readme = (REPO / "README.md").read_text().replace("−", "-")
    readme = re.sub(r"\s+", " ", readme)
    missing = [c for c in claims if c not in readme]
    assert not missing, missing


def pipeline_speed_claims(params: str) -> tuple[str, str]:
    """(the README's sentence, the table row in docs/reproducibility.md) for
    docs/benchmarks/pipeline_speed_{params}.json, as `benchmarks/pipeline_speed.py` wrote it."""
    import json

    bench = json.loads((REPO / "docs" / "benchmarks" / f"pipeline_speed_{params}.json").read_text())
    one, many = bench["runs"][0], bench["runs"][-1]

    def minutes(s: float) -> str:
        return f"{int(s // 60)} min {round(s % 60):02d} s"

    sentence = (
        f"{minutes(many['wall_s'])} at {many['jobs']} jobs against {minutes(one['wall_s'])} one stage "
        f"at a time ({one['wall_s'] / many['wall_s']:.2f}× faster, {many['busy_cores']:.2f} cores busy"
    )
    row = (
        f"| {params} | {bench['cpu']}, {bench['cores']} cores, {bench['date']} | {minutes(one['wall_s'])}, "
        f"{one['busy_cores']:.2f} | {minutes(many['wall_s'])}, {many['busy_cores']:.2f} | "
        f"{one['wall_s'] / many['wall_s']:.2f}× | {'yes' if bench['same_dvc_lock'] else 'no'} |"
    )
    return sentence, row


def test_the_pipeline_speed_figures_are_the_benchmarks():
    """The wall times README and docs/reproducibility.md state, formatted from the committed
    benchmark output: a new measurement fails here until the docs say it."""
    readme = re.sub(r"\s+", " ", (REPO / "README.md").read_text())
    doc = (REPO / "docs" / "reproducibility.md").read_text()
    sentence, _ = pipeline_speed_claims("default")
    assert sentence in readme
    for params in ("default", "tiny"):
        assert pipeline_speed_claims(params)[1] in doc


def stage_worker_rows() -> list[str]:
    """docs/reproducibility.md's rows of per-image work on 1 and N workers, formatted from
    docs/benchmarks/stage_workers_default.json as `benchmarks/pipeline_speed.py --workers` wrote it."""
    import json

    bench = json.loads((REPO / "docs" / "benchmarks" / "stage_workers_default.json").read_text())
    rows = []
    for stage, (one, many) in bench["runs"][-1]["sharded_stages"].items():
        same = bench["same_reports_on_every_worker_count"][stage]
        rows.append(
            f"| {stage} | {bench['cpu']}, {bench['cores']} cores, {bench['date']} | {one['wall_s']:.0f} s | "
            f"{many['wall_s']:.0f} s | {one['wall_s'] / many['wall_s']:.2f}× | {'yes' if same else 'no'} |"
        )
    return rows


def test_the_stage_worker_figures_are_the_benchmarks():
    import json

    doc = (REPO / "docs" / "reproducibility.md").read_text()
    missing = [row for row in stage_worker_rows() if row not in doc]
    assert not missing, missing
    bench = json.loads((REPO / "docs" / "benchmarks" / "stage_workers_default.json").read_text())
    one, many = bench["runs"][-1]["sharded_stages"]["evaluate"]
    readme = re.sub(r"\s+", " ", (REPO / "README.md").read_text())
    claim = f"{one['wall_s']:.0f} s on {one['workers']} worker, {many['wall_s']:.0f} s on {many['workers']}"
    assert f"{claim}, the same bytes" in readme


def pin_candidate_rows(name: str) -> list[str]:
    """The rows of docs/reproducibility.md's table of candidate pins, formatted from
    docs/benchmarks/pins_{name}.json as `benchmarks/pin_candidates.py` wrote it."""
    import json

    rows = json.loads((REPO / "docs" / "benchmarks" / f"pins_{name}.json").read_text())["rows"]
    base = rows[0]["samples_per_s"]
    same = {
        r["candidate"]: len({s["sha256"] for s in rows if s["candidate"] == r["candidate"]}) == 1
        for r in rows
    }
    return [
        f"| {r['candidate']} | {r['threads']} | {r['samples_per_s']:,} | {r['samples_per_s'] / base:.2f}× | "
        f"`{r['sha256'][:12]}` | {'yes' if same[r['candidate']] else 'no'} |"
        for r in rows
    ]


def test_the_candidate_pins_table_is_the_benchmarks():
    doc = (REPO / "docs" / "reproducibility.md").read_text()
    missing = [row for row in pin_candidate_rows("amd-epyc-zen4") if row not in doc]
    assert not missing, missing


def test_dvc_plots_page_inlines_the_vega_libraries_dvc_itself_loads():
    """`dvc plots show` offline: .dvc/config names a page template that fetches no script and
    carries exactly the vega, vega-lite and vega-embed versions of DVC's own page."""
    import configparser

    from dvc_render.vega import VegaRenderer

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    template = REPO / ".dvc" / config["plots"]["html_template"]
    page = template.read_text()
    wanted = re.findall(r"npm/([\w-]+@[\d.]+)", VegaRenderer.SCRIPTS)
    assert sorted(wanted) == ["vega-embed@6.18.2", "vega-lite@5.2.0", "vega@5.20.2"]
    assert re.findall(r"<!-- ([\w-]+@[\d.]+) \(sha512-", page) == wanted
    assert page.count("<script>") == page.count("</script>") == len(wanted)
    assert not re.search(r"<(script|link)[^>]*(src|href)=", page)
    assert "{plot_divs}" in page


def test_the_cli_page_lists_every_command_and_option_the_cli_has():
    """docs/cli.md's synopsis against the Typer app: the same commands, each with the same
    long options (a line indented under a command continues it)."""
    import typer

    from vaectl.cli import app

    block = re.search(r"```\n(.*?)```", (REPO / "docs" / "cli.md").read_text(), re.S).group(1)
    documented: dict[str, set[str]] = {}
    for line in block.splitlines():
        if line.startswith("vaectl "):
            command = documented.setdefault(line.split()[1], set())
        command |= set(re.findall(r"--[a-z][a-z0-9-]*", line))
    actual = {
        name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
        for name, cmd in typer.main.get_command(app).commands.items()
    }
    assert documented == actual
