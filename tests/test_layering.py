"""The code's layering, checked from its source: every DVC stage's `deps` lists exactly the
vaectl files its command imports (transitively), and no stage module imports another, so an
edit reruns exactly the stages it can change."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "vaectl"
ARCHS = "vaectl.archs"


def module_file(name: str) -> Path | None:
    """vaectl.a.b -> src/vaectl/a/b.py or src/vaectl/a/b/__init__.py; None if not vaectl's."""
    if name != "vaectl" and not name.startswith("vaectl."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(nodes: list[ast.AST], package: str) -> set[str]:
    """Every module an import statement anywhere under `nodes` loads, parents included
    (importing a.b.c runs a/__init__ and a/b/__init__); `from a import b` counts a.b when b
    is a module."""
    names: set[str] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    loaded = set()
    for name in names:
        parts = name.split(".")
        loaded.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in loaded if module_file(name) is not None}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def closure(start: set[str]) -> set[str]:
    """Modules reachable from `start` through imports anywhere in each module (a function's
    lazy import counts: the function may run), and every architecture once vaectl.archs is
    reached. cli.py is not followed: each command imports its own stage lazily, and
    `command_modules` has already read what one command imports."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == "vaectl.cli":
            continue
        if name == ARCHS:  # architecture(name) imports any of its modules, by params' name
            todo.extend(module_name(p) for p in (PACKAGE / "archs").glob("*.py"))
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo.extend(imported_modules([ast.parse(path.read_text())], package) - seen)
    return seen


def cli_tree() -> tuple[ast.Module, dict[str, ast.FunctionDef]]:
    """cli.py parsed, and its module-level functions (the commands among them) by name."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    return tree, {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def command_modules(command: str) -> set[str]:
    """What `vaectl COMMAND` imports: cli.py's module-level imports, plus the imports inside
    the command's function and inside the cli.py functions it calls."""
    tree, functions = cli_tree()
    top_level = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert command in functions, f"no command {command!r} in cli.py"
    bodies, todo = [], [command]
    while todo:
        function = functions[todo.pop()]
        if function in bodies:
            continue
        bodies.append(function)
        todo.extend(
            n.func.id
            for n in ast.walk(function)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions
        )
    start = {"vaectl", "vaectl.cli"} | imported_modules(top_level + bodies, "vaectl")
    return closure(start)


def stage_source_deps() -> dict[str, tuple[str, set[str]]]:
    """{stage: (vaectl command, the src/ files its deps list)} from dvc.yaml."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        words = body["cmd"].split()
        assert words[0] == "vaectl", f"stage {name} is not a vaectl command"
        found[name] = (words[1], {d for d in body["deps"] if d.startswith("src/")})
    return found


def stage_modules() -> dict[str, str]:
    """{stage: its module}, read from dvc.yaml and cli.py: the module the stage's command
    imports as `stage` (the CLI's one convention for the module that does a stage's work)."""
    _, functions = cli_tree()
    found = {}
    for name, (command, _) in stage_source_deps().items():
        modules = [
            f"{node.module}.{alias.name}"
            for node in ast.walk(functions[command])
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
            if alias.asname == "stage"
        ]
        assert len(modules) == 1, f"`vaectl {command}` (stage {name}) imports no one module as `stage`"
        found[name] = modules[0]
    return found


def relative(modules: set[str]) -> set[str]:
    return {str(module_file(m).relative_to(REPO)) for m in modules}


@pytest.mark.parametrize("stage", sorted(stage_source_deps()))
def test_stage_deps_are_exactly_what_its_command_imports(stage):
    command, listed = stage_source_deps()[stage]
    imported = relative(command_modules(command))
    assert not imported - listed, f"dvc.yaml stage {stage} misses {sorted(imported - listed)}"
    assert not listed - imported, f"dvc.yaml stage {stage} lists {sorted(listed - imported)}, not imported"


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_a_2d_model_depends_on_each_training_key_but_the_latent_size_it_replaces(kind):
    """`--latent-dim 2` replaces train.KIND.latent_dim, so a latent-size experiment must not
    retrain the 2-D model: its params are every other key of the kind's training params."""
    from dataclasses import fields

    from vaectl.params import TrainGroup

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][f"train2d-{kind}"]
    assert "--latent-dim 2" in stage["cmd"]
    training = getattr(TrainGroup(), kind)
    keys = {f"train.{kind}.{f.name}" for f in fields(training) if f.name != "latent_dim"}
    assert set(stage["params"]) == keys | {"model", "numerics", "train.device", "tracking"}


@pytest.mark.parametrize("stage_module", sorted(set(stage_modules().values())))
def test_no_stage_module_imports_another(stage_module):
    path = module_file(stage_module)
    imports = imported_modules([ast.parse(path.read_text())], stage_module.rsplit(".", 1)[0])
    others = sorted(set(stage_modules().values()) - {stage_module} & imports)
    assert not others, f"{stage_module} imports stage module(s) {others}"


def test_only_the_tracking_package_imports_mlflow():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "tracking":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "mlflow" for n in names), f"{path} imports mlflow"


def test_the_closure_sees_lazy_and_transitive_imports():
    """The checker itself: it must see an import inside a function and follow it down."""
    evaluate = relative(command_modules("evaluate"))
    assert "src/vaectl/tracking/__init__.py" in evaluate  # imported inside log_evaluation
    assert "src/vaectl/models.py" in relative(command_modules("classifier"))  # via judge.py
    assert "src/vaectl/train.py" not in evaluate


def test_a_registered_version_bundles_exactly_what_the_pyfunc_imports():
    from vaectl.tracking.pyfunc import BUNDLED_FILES

    needed = relative(closure({"vaectl", "vaectl.tracking", "vaectl.tracking.pyfunc"}))  # + parents
    assert needed == {f"src/vaectl/{name}" for name in BUNDLED_FILES}
