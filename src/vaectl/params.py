"""params.yaml -> typed, validated config. Loaded once at the CLI edge, passed into stages.

Every key is declared here; an unknown, missing or mistyped key is a one-line error naming it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from vaectl import UserError
from vaectl.archs import PIXELS, Arch, architecture, dense_count


@dataclass(frozen=True)
class DataParams:
    name: Literal["mnist-5k", "mnist", "fashion-mnist", "kmnist"] = "mnist-5k"
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # mnist-5k only: the full sets ship an official test split
    seed: int = 0
    mirrors: list[str] = field(default_factory=list)  # tried before torchvision's own mirrors


@dataclass(frozen=True)
class ValidateParams:
    min_rows: int = 10  # per split
    class_balance_tolerance: float = 0.25  # each class share within (1 +- tol) / n_classes
    drift_tolerance: float = 0.1  # each split's mean intensity within (1 +- tol) * train's


@dataclass(frozen=True)
class ModelParams:
    arch: Arch = "mlp"  # vaectl.archs
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    logvar_clip: list[float] = field(default_factory=list)  # [low, high] of the VAE's log-variance; [] = none
    pseudo_inputs: int = 0  # the VAE's prior: 0 = N(0, I); K > 0 = a VampPrior on K learned pseudo-images


@dataclass(frozen=True)
class TrainParams:
    latent_dim: int = 20
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10  # early stopping on validation loss; 0 disables it
    binarize: Literal["none", "dynamic", "static"] = "dynamic"
    seed: int = 0
    sample_every: int = 5  # log sample/reconstruction grids every N epochs
    grad_norm: bool = False  # scale each parameter's gradient to unit L2 norm before Adam
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr -> 0 over `epochs`, per step


@dataclass(frozen=True)
class VAETrainParams(TrainParams):
    beta: float = 1.0
    kl_warmup_epochs: int = 0


@dataclass(frozen=True)
class TrainGroup:
    vae: VAETrainParams = field(default_factory=VAETrainParams)
    ae: TrainParams = field(default_factory=TrainParams)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when present (fast numerics only)


@dataclass(frozen=True)
class NumericsParams:
    """How every stage that computes runs its kernels (vaectl.numerics says what each pins)."""

    mode: Literal["portable", "fast"] = "portable"  # portable: the same bytes on any x86-64 CPU
    threads: int = 1  # torch intra-op threads; 0 = torch's default, the number of cores (fast only)


@dataclass(frozen=True)
class ClassifierParams:
    hidden: list[int] = field(default_factory=lambda: [256])
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class EvalParams:
    iw_samples: int = 5000  # k of the importance-weighted NLL (5000 in the literature)
    iw_chunk: int = 25  # samples decoded at once per image batch (speed/memory knob only)
    iw_precision: Literal["float32", "bfloat16"] = "float32"  # the decoder's matmuls in the IW-NLL
    batch_size: int = 100  # test images per batch
    seed: int = 0  # test binarisation, sampling noise, interpolation pairs
    interp_pairs: int = 500  # per kind: same-class pairs and different-class pairs
    interp_steps: int = 10
    interp_mode: Literal["lerp", "slerp"] = "lerp"
    ppl_epsilon: float = 1e-3
    ppl_samples: int = 64  # u grid points per pair
    generated: int = 500  # samples drawn per model for the generation metrics
    hole_threshold: float = 0.5  # a decoded image the judge gives a lower max-probability is a hole
    hole_grid: int = 20  # the 2-D experiment decodes a hole_grid x hole_grid grid of latents
    classifier: ClassifierParams = field(default_factory=ClassifierParams)


ELBO_SAMPLES = 100  # evaluate's Monte-Carlo draws per test image of the ELBO's terms

# What a registered model's predict does (its `mode` param): the pyfunc checks it, `vaectl
# predict` checks it before downloading anything, and the model card lists it.
PREDICT_MODES = ("reconstruct", "encode", "decode", "sample", "score")


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a registered model's name


@dataclass(frozen=True)
class RegistryParams:
    vae_name: str = "vae-mnist"
    ae_name: str = "ae-mnist"
    min_improvement: float = 0.0  # nats a new champion must beat the current one by
    require_smoother_than_baseline: bool = True  # VAE only: VAE/AE ratio's interval below 1
    smoothness_metric: Literal[
        "diff_class.ppl_normalized",
        "diff_class.ppl",
        "diff_class.path_length_ratio",
        "diff_class.step_unevenness",
        "same_class.ppl_normalized",
        "same_class.ppl",
        "same_class.path_length_ratio",
        "same_class.step_unevenness",
    ] = "diff_class.ppl_normalized"


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "vaectl"


@dataclass(frozen=True)
class OodParams:
    """`vaectl ood`: the test split against novel sets, scored by the VAE and the AE."""

    other: Literal["none", "mnist", "fashion-mnist", "kmnist"] = (
        "none"  # that dataset's test set as a novel set
    )
    shifts: list[Literal["noise", "constant", "inverted", "flipped"]] = field(
        default_factory=lambda: ["noise", "constant", "inverted", "flipped"]
    )
    images: int = 2000  # at most this many images per novel set (the first of the other test set)
    iw_samples: int = 100  # k of the IW-NLL score (cheap; 1 = the one-sample ELBO)
    elbo_samples: int = 16  # Monte-Carlo draws of the -ELBO score


@dataclass(frozen=True)
class StudyParams:
    """`vaectl study` (DVC experiments, not a pipeline stage). The default grid is the fast
    one (20 trials, under an hour on 2 cores); params/study-full.yaml is the full one."""

    betas: list[float] = field(default_factory=lambda: [0.5, 1.0, 4.0])  # VAE only
    latent_dims: list[int] = field(default_factory=lambda: [2, 20])  # both models
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # training and evaluation seeds
    iw_samples: int = 1000  # eval.iw_samples in the trials


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainGroup = field(default_factory=TrainGroup)
    numerics: NumericsParams = field(default_factory=NumericsParams)
    eval: EvalParams = field(default_factory=EvalParams)
    registry: RegistryParams = field(default_factory=RegistryParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    ood: OodParams = field(default_factory=OodParams)
    study: StudyParams = field(default_factory=StudyParams)


def _type_name(tp: object) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: object, tp: object, key: str) -> object:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"params: '{key}' must be a mapping, got {value!r}")
        return _build(typing.cast(type, tp), value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"params: '{key}' must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"params: '{key}' must be a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):  # type: ignore[arg-type]
        raise UserError(f"params: '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, raw: dict, prefix: str) -> object:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise UserError(f"params: unknown key '{where}' (known: {', '.join(sorted(names))})")
    kwargs = {
        name: _convert(raw[name], hints[name], f"{prefix}.{name}" if prefix else name)
        for name in names
        if name in raw
    }
    return cls(**kwargs)


def _check_ranges(p: Params) -> None:
    for key, value in flatten(p).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"params: '{key}' must be a finite number, got {value!r}")
    checks = (
        _setup_checks(p) + _training_checks(p) + _evaluation_checks(p.eval) + _registry_and_study_checks(p)
    )
    for ok, message in checks:
        if not ok:
            raise UserError(f"params: {message}")


Checks = list[tuple[bool, str]]  # (holds, what the params must be when it does not)


def _setup_checks(p: Params) -> Checks:
    return [
        (p.data.seed >= 0, "data.seed must be >= 0"),
        (p.eval.seed >= 0, "eval.seed must be >= 0"),
        (p.numerics.threads >= 0, "numerics.threads must be >= 0 (0 keeps torch's default)"),
        (
            p.numerics.mode == "fast" or p.numerics.threads >= 1,
            "numerics.mode portable needs numerics.threads >= 1: torch's default is the machine's core "
            "count, and the thread count changes the bytes",
        ),
        (
            p.numerics.mode == "fast" or p.eval.iw_precision == "float32",
            "numerics.mode portable needs eval.iw_precision: float32 (bfloat16 matmuls round "
            "differently on AMX, AVX512-BF16 and other CPUs)",
        ),
        (
            p.numerics.mode == "fast" or p.train.device != "cuda",
            "numerics.mode portable computes on the CPU (a GPU's kernels are its own); "
            "train.device: cuda needs numerics.mode: fast",
        ),
        (len(p.model.hidden) >= 1, "model.hidden needs at least one layer size"),
        (0 < p.data.val_fraction < 1, "data.val_fraction must be in (0, 1)"),
        (0 < p.data.test_fraction < 1, "data.test_fraction must be in (0, 1)"),
        (p.data.val_fraction + p.data.test_fraction < 1, "data val + test fractions must be < 1"),
        (all(h > 0 for h in p.model.hidden), "model.hidden sizes must be positive"),
        (
            not p.model.logvar_clip
            or (len(p.model.logvar_clip) == 2 and p.model.logvar_clip[0] < p.model.logvar_clip[1]),
            "model.logvar_clip must be [] or [low, high] with low < high",
        ),
        (p.model.pseudo_inputs >= 0, "model.pseudo_inputs must be >= 0 (0: the N(0, I) prior)"),
        (p.validate.min_rows >= 1, "validate.min_rows must be >= 1"),
    ]


def _training_checks(p: Params) -> Checks:
    checks: Checks = []
    for name, t in (("vae", p.train.vae), ("ae", p.train.ae)):
        checks += [
            (t.latent_dim >= 1, f"train.{name}.latent_dim must be >= 1"),
            (t.epochs >= 1, f"train.{name}.epochs must be >= 1"),
            (t.batch_size >= 1, f"train.{name}.batch_size must be >= 1"),
            (t.lr > 0, f"train.{name}.lr must be > 0"),
            (t.patience >= 0, f"train.{name}.patience must be >= 0"),
            (t.sample_every >= 1, f"train.{name}.sample_every must be >= 1"),
            (t.seed >= 0, f"train.{name}.seed must be >= 0"),
        ]
    checks.append((p.train.vae.beta >= 0, "train.vae.beta must be >= 0"))
    return checks


def _evaluation_checks(e: EvalParams) -> Checks:
    return [
        (
            e.iw_samples >= 1 and e.iw_chunk >= 1 and e.batch_size >= 1,
            "eval.iw_samples, eval.iw_chunk and eval.batch_size must be >= 1",
        ),
        (e.interp_pairs >= 1 and e.interp_steps >= 2, "eval needs interp_pairs >= 1, interp_steps >= 2"),
        (0 < e.ppl_epsilon < 1 and e.ppl_samples >= 1, "eval.ppl_epsilon must be in (0, 1)"),
        (e.generated >= 2, "eval.generated must be >= 2"),
        (0 < e.hole_threshold < 1, "eval.hole_threshold must be in (0, 1)"),
        (e.hole_grid >= 2, "eval.hole_grid must be >= 2"),
        (
            e.classifier.epochs >= 1 and all(h > 0 for h in e.classifier.hidden),
            "eval.classifier needs epochs >= 1 and positive hidden sizes",
        ),
        (e.classifier.batch_size >= 1, "eval.classifier.batch_size must be >= 1"),
        (e.classifier.lr > 0, "eval.classifier.lr must be > 0"),
        (e.classifier.seed >= 0, "eval.classifier.seed must be >= 0"),
    ]


def _registry_and_study_checks(p: Params) -> Checks:
    r = p.registry
    checks: Checks = [
        (
            all(MODEL_NAME.fullmatch(n) for n in (r.vae_name, r.ae_name)),
            f"registry.vae_name and ae_name must be 1-100 letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit (no '/' or '@': they separate versions and aliases), got "
            f"{r.vae_name!r} and {r.ae_name!r}",
        ),
        (
            r.vae_name != r.ae_name,
            "registry.vae_name and ae_name must differ: each name's @champion "
            "is chosen on its own model's metric",
        ),
        (r.min_improvement >= 0, "registry.min_improvement must be >= 0 (nats a new champion must win by)"),
    ]
    o = p.ood
    checks += [
        (o.images >= 2, "ood.images must be >= 2 (a detection metric needs images on both sides)"),
        (o.iw_samples >= 1 and o.elbo_samples >= 1, "ood.iw_samples and ood.elbo_samples must be >= 1"),
        (len(set(o.shifts)) == len(o.shifts), "ood.shifts names a shift twice"),
        (bool(o.shifts) or o.other != "none", "ood needs a novel set: ood.shifts or ood.other"),
    ]
    s = p.study
    checks += [
        (len(s.betas) >= 1 and all(b >= 0 for b in s.betas), "study.betas needs values >= 0"),
        (
            len(s.latent_dims) >= 1 and all(d >= 1 for d in s.latent_dims),
            "study.latent_dims needs values >= 1",
        ),
        (
            len(set(s.seeds)) == len(s.seeds) >= 2 and all(x >= 0 for x in s.seeds),
            "study.seeds needs at least 2 distinct seeds >= 0 (intervals come from the spread)",
        ),
        (s.iw_samples >= 1, "study.iw_samples must be >= 1"),
    ]
    return checks


# Hard caps: a value past one is a typo or an attack, not a study. Each sits 10-100x past
# the largest value this repo or the literature uses, and bounds what a count costs in time
# (the IW-NLL decodes test images x iw_samples, the interpolations pairs x ppl_samples).
# Keys are fnmatch patterns over flatten()'s names; a list is capped item by item. The
# docs/bounds.md lists every one (tests/test_params.py keeps the two in step).
CAPS: dict[str, int] = {
    "train.*.latent_dim": 1024,
    "train.*.epochs": 100_000,
    "train.*.batch_size": 65_536,
    "train.*.patience": 100_000,
    "train.*.sample_every": 100_000,
    "train.vae.kl_warmup_epochs": 100_000,
    "model.hidden": 8192,
    "model.pseudo_inputs": 10_000,
    "numerics.threads": 256,
    "eval.iw_samples": 100_000,
    "eval.iw_chunk": 100_000,
    "eval.batch_size": 10_000,
    "eval.interp_pairs": 10_000,
    "eval.interp_steps": 1_000,
    "eval.ppl_samples": 10_000,
    "eval.generated": 100_000,
    "eval.hole_grid": 200,
    "eval.classifier.hidden": 8192,
    "eval.classifier.epochs": 10_000,
    "eval.classifier.batch_size": 65_536,
    "validate.min_rows": 10_000_000,
    "ood.images": 100_000,
    "ood.iw_samples": 100_000,
    "ood.elbo_samples": 10_000,
    "study.latent_dims": 1024,
    "study.iw_samples": 100_000,
    "*seed*": 2**32 - 1,  # numpy's legacy seeding takes < 2**32; torch's < 2**64
}
LIST_CAPS: dict[str, int] = {
    "model.hidden": 16,
    "eval.classifier.hidden": 16,
    "data.mirrors": 20,
    "study.*": 20,
}
TEXT_CAP = 2000  # characters of any one string (a mirror, a name)
STUDY_MAX_TRIALS = 200  # `vaectl study` trains two models per trial

# The estimated peak of any one computation (a training step, an IW-NLL chunk, the
# interpolation paths) must fit this, so that a large value is refused before it allocates
# instead of ending in an allocator's traceback or the kernel's OOM killer.
MEMORY_BUDGET_ENV = "VAECTL_MEMORY_BUDGET_GIB"
MEMORY_BUDGET_GIB = 8.0  # a third of the 24 GiB machines this project runs on
FIXED_OVERHEAD_BYTES = 64 << 20  # the allocator's and kernels' scratch, on top of every estimate


def _check_caps(p: Params) -> None:
    for key, value in flatten(p).items():
        items = value if isinstance(value, list) else [value]
        for pattern, cap in LIST_CAPS.items():
            if fnmatch.fnmatchcase(key, pattern) and isinstance(value, list) and len(value) > cap:
                raise UserError(f"params: {key} has {len(value)} entries, more than its cap {cap}")
        for item in items:
            if isinstance(item, str) and len(item) > TEXT_CAP:
                raise UserError(
                    f"params: {key} holds a string of {len(item)} characters, more than {TEXT_CAP}"
                )
        for pattern, cap in CAPS.items():
            big = [v for v in items if isinstance(v, int) and v > cap]
            if fnmatch.fnmatchcase(key, pattern) and big:
                raise UserError(f"params: {key} = {big[0]} is past its cap {cap} (docs/bounds.md)")
    trials = len(p.study.seeds) * (len(p.study.betas) + len(p.study.latent_dims))
    if trials > STUDY_MAX_TRIALS:
        raise UserError(f"params: the study's lists make {trials} trials, more than {STUDY_MAX_TRIALS}")


def parameter_count(kind: str, m: ModelParams, latent_dim: int) -> int:
    """The weights and biases of vaectl.models.build_model(kind, ...), from the sizes alone."""
    arch = architecture(m.arch)
    head = dense_count([arch.features(m.hidden), latent_dim * (2 if kind == "vae" else 1)])
    pseudo = m.pseudo_inputs * PIXELS if kind == "vae" else 0
    return arch.parameter_count(m.hidden, latent_dim) + head + pseudo


def image_bytes(m: ModelParams, latent_dim: int, backward: bool) -> int:
    """An upper estimate of the bytes one image holds in a forward pass, as if every tensor
    stayed alive: pixels and logits, each layer's outputs on both sides (the architecture
    counts them), latents, and the VampPrior's K mixture terms in float64; a backward
    pass keeps them all and adds as much again in gradients."""
    floats = architecture(m.arch).activation_floats(m.hidden, latent_dim) + 2 * latent_dim
    return 4 * floats * (2 if backward else 1) + 3 * 8 * m.pseudo_inputs


def memory_estimates(p: Params) -> dict[str, tuple[int, str]]:
    """(estimated peak bytes, the keys that set it) of each large computation."""
    e, m = p.eval, p.model
    out = {}
    for kind, t in (("vae", p.train.vae), ("ae", p.train.ae)):
        weights = 16 * parameter_count(kind, m, t.latent_dim)  # weights, gradients, Adam's two moments
        pseudo = m.pseudo_inputs if kind == "vae" else 0  # encoded beside every batch
        out[f"the {kind.upper()}'s training step"] = (
            weights + (t.batch_size + pseudo) * image_bytes(m, t.latent_dim, backward=True),
            f"train.{kind}.batch_size, train.{kind}.latent_dim, model.hidden, model.pseudo_inputs",
        )
        images_per_pair = 2 * e.ppl_samples + 2 + e.interp_steps + 1
        out[f"the {kind.upper()}'s interpolations"] = (
            e.interp_pairs * images_per_pair * image_bytes(m, t.latent_dim, False),
            "eval.interp_pairs x (eval.ppl_samples, eval.interp_steps), model.hidden",
        )
        out[f"the {kind.upper()}'s generated set"] = (
            e.generated * image_bytes(m, t.latent_dim, False),
            "eval.generated, model.hidden",
        )
    out["the VAE's likelihood batch"] = (
        e.batch_size * max(e.iw_chunk, ELBO_SAMPLES) * image_bytes(m, p.train.vae.latent_dim, False),
        f"eval.batch_size x eval.iw_chunk (at least the ELBO's {ELBO_SAMPLES} draws), model.hidden",
    )
    out["the ood stage's -ELBO batch"] = (  # novelty.neg_elbo decodes every draw of a batch at once
        e.batch_size * max(p.ood.elbo_samples, e.iw_chunk) * image_bytes(m, p.train.vae.latent_dim, False),
        "eval.batch_size x ood.elbo_samples, model.hidden",
    )
    judge = [PIXELS, *e.classifier.hidden, 10]  # vaectl.judge's MLP over the ten classes
    judge_step = 16 * dense_count(judge) + e.classifier.batch_size * 4 * 3 * sum(judge)
    out["the judge's training step"] = (judge_step, "eval.classifier.batch_size, eval.classifier.hidden")
    return {what: (FIXED_OVERHEAD_BYTES + estimate, keys) for what, (estimate, keys) in out.items()}


def memory_budget_bytes() -> int:
    raw = os.environ.get(MEMORY_BUDGET_ENV, str(MEMORY_BUDGET_GIB))
    try:
        gib = float(raw)
    except ValueError:
        gib = math.nan
    if not 0 < gib < math.inf:
        raise UserError(f"{MEMORY_BUDGET_ENV} must be a positive number of GiB, got {raw!r}")
    return int(gib * 2**30)


def _check_memory(p: Params) -> None:
    budget = memory_budget_bytes()
    for what, (estimate, keys) in memory_estimates(p).items():
        if estimate > budget:
            raise UserError(
                f"params: {what} would need about {estimate / 2**30:.1f} GiB ({keys}), past "
                f"the {budget / 2**30:g} GiB budget (raise it with {MEMORY_BUDGET_ENV})"
            )


def parse_params(raw: dict | None) -> Params:
    params = _build(Params, raw or {}, "")
    _check_ranges(params)  # type: ignore[arg-type]
    problem = architecture(params.model.arch).check(params.model.hidden)  # type: ignore[attr-defined]
    if problem:
        raise UserError(f"params: {problem}")
    _check_caps(params)  # type: ignore[arg-type]
    _check_memory(params)  # type: ignore[arg-type]
    return params  # type: ignore[return-value]


def load_params(path: Path) -> Params:
    return parse_params(read_mapping(path))


# What a params file may be: params.yaml is ~5 kB and 4 levels deep. Past these a file is an
# accident or an attack (a YAML alias "billion laughs" expands a few lines into 10^9 nodes).
PARAMS_FILE_MAX_BYTES = 1 << 20
PARAMS_MAX_DEPTH = 32
PARAMS_MAX_NODES = 100_000  # scalars, lists and mappings, each alias counted as what it expands to


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader with the bounds above checked while composing (before any Python
    object is built or walked) and a duplicated key refused, as DVC refuses it."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth, self.nodes, self.sizes = 0, 0, {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            self._count(self.sizes.get(id(node), 1), event.start_mark)
            return node
        self.depth += 1
        if self.depth > PARAMS_MAX_DEPTH:
            self._refuse(f"nested deeper than {PARAMS_MAX_DEPTH} levels", self.peek_event().start_mark)
        before = self.nodes
        node = super().compose_node(parent, index)
        self.depth -= 1
        self._count(1, node.start_mark)
        self.sizes[id(node)] = self.nodes - before
        return node

    def _count(self, n: int, mark) -> None:
        self.nodes += n
        if self.nodes > PARAMS_MAX_NODES:
            self._refuse(f"more than {PARAMS_MAX_NODES} values once aliases are expanded", mark)

    def _refuse(self, problem: str, mark) -> None:
        raise yaml.constructor.ConstructorError(None, None, problem, mark)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node)
            if isinstance(key, typing.Hashable) and key in seen:
                self._refuse(f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key if isinstance(key, typing.Hashable) else id(key))
        return super().construct_mapping(node, deep)


BoundedLoader.add_constructor("tag:yaml.org,2002:map", BoundedLoader.construct_yaml_map)


def _yaml_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"params file not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    with open(path, "rb") as f:
        data = f.read(PARAMS_FILE_MAX_BYTES + 1)
    if len(data) > PARAMS_FILE_MAX_BYTES:
        raise UserError(f"{path}: larger than {PARAMS_FILE_MAX_BYTES} bytes: not a params file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None


def read_mapping(path: Path) -> dict | None:
    """A YAML file's top-level mapping (None when empty), or a one-line error with the line
    and column: also for a file past the size, depth or alias bounds, or a duplicated key."""
    path = Path(path)
    text = _yaml_text(path)
    try:
        raw = yaml.load(text, Loader=BoundedLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{path}: top level must be a mapping")
    return raw


def merge(base: dict, overlay: dict) -> dict:
    """`base` with every leaf of `overlay` put in (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in overlay.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merge(base[key], value) if nested else value
    return out


def apply_overlay(base_path: Path, overlay_path: Path) -> tuple[dict, list[str]]:
    """(params.yaml with an overlay's keys put in, checked like any params file; the overlay as
    `dvc exp run -S key=value` overrides). A preset names only the keys it changes."""
    overlay = read_mapping(overlay_path)
    if not overlay:
        raise UserError(f"{overlay_path}: an overlay needs at least one key")
    merged = merge(read_mapping(base_path) or {}, overlay)
    try:
        parse_params(merged)
    except UserError as err:
        raise UserError(f"{overlay_path} on {base_path}: {err}") from None
    return merged, [f"{key}={_override_value(value)}" for key, value in flatten(overlay).items()]


def study_grid(base_path: Path, overlay_path: Path) -> Params:
    """params.yaml with another study grid: the overlay may name only study.* keys, because
    the trials are DVC experiments of the workspace's params.yaml (their -S overrides aside)."""
    others = sorted(set(read_mapping(overlay_path) or {}) - {"study"})
    if others:
        raise UserError(f"{overlay_path}: a study overlay may set only study.* keys, not {', '.join(others)}")
    return parse_params(apply_overlay(base_path, overlay_path)[0])


def _override_value(value: object) -> str:
    """A value in DVC's (Hydra's) override syntax, with no spaces, so flags split on them."""
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    if not text or any(c.isspace() or c in "'\"=,[]{}()" for c in text):
        raise UserError(f"overlay value {text!r} cannot be written as a `dvc exp run -S` override")
    return text


def flatten(obj: object, prefix: str = "") -> dict[str, object]:
    """Dotted keys for MLflow params and manifests: {'train.vae.lr': 0.001, ...}."""
    mapping = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj
    out: dict[str, object] = {}
    for key, value in typing.cast(dict, mapping).items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out
