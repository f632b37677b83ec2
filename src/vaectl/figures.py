"""PNG grids of 28x28 images: samples, reconstructions, interpolation paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaectl.files import atomic_path


def image_grid(images: np.ndarray, ncol: int, pad: int = 2) -> np.ndarray:
    """(N, 28, 28) floats in [0, 1] -> one uint8 image, `ncol` tiles a row, white padding."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    nrow = -(-len(images) // ncol)
    tile = 28 + pad
    grid = np.ones((nrow * tile + pad, ncol * tile + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[pad + r * tile : pad + r * tile + 28, pad + c * tile : pad + c * tile + 28] = img
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def _rows_figure(rows: list[tuple[str, np.ndarray]], ncol: int, title: str, path: Path) -> None:
    """Labelled rows of image grids, one matplotlib figure, saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(rows),
        1,
        figsize=(ncol * 0.6, 0.75 * sum(-(-len(images) // ncol) for _, images in rows) + 0.6),
        squeeze=False,
    )
    for ax, (label, images) in zip(axes[:, 0], rows, strict=True):
        ax.imshow(image_grid(images, ncol), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def one_per_class(labels: np.ndarray) -> np.ndarray:
    """The first index of each class, in class order: the splits are sorted by class, so the
    first N images would all be one digit."""
    return np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels)])


def evaluation_figures(
    out_dir: Path,
    models: dict,
    x_pixels,
    labels: np.ndarray,
    paths: dict,
    pairs: dict,
    samples: dict,
    curves: dict[str, list[dict]],
) -> list[Path]:
    """reconstructions (one test image per class), samples, interpolation grids (for the same
    pairs, the real end images beside the VAE row and the AE row), a 2-D map of test latents
    coloured by label, training curves (the per-epoch history of each model that has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    originals = x_pixels[one_per_class(labels)]
    with torch.no_grad():
        recon = {n: m.reconstruct(originals).numpy() for n, (m, _) in models.items()}
    written.append(out_dir / "reconstructions.png")
    _rows_figure(
        [("input\n(test)", originals.numpy()), ("VAE", recon["vae"]), ("AE", recon["ae"])],
        len(originals),
        "Reconstructions of test images (posterior mean / AE code)",
        written[-1],
    )
    written.append(out_dir / "samples.png")
    _rows_figure(
        [("VAE prior", samples["vae"][:32].numpy()), ("AE fitted\nGaussian", samples["ae"][:32].numpy())],
        16,
        "Generated samples",
        written[-1],
    )
    for kind in ("same_class", "diff_class"):
        rows = []
        for p in range(min(3, len(pairs[kind]))):
            first, last = (x_pixels[i].numpy()[None] for i in pairs[kind][p])
            for name in ("vae", "ae"):
                rows.append(
                    (
                        f"pair {p + 1} {name.upper()}",
                        np.concatenate([first, paths[(name, kind)][p].numpy(), last]),
                    )
                )
        written.append(out_dir / f"interpolation_{kind}.png")
        _rows_figure(
            rows,
            paths[("vae", kind)].shape[1] + 2,
            f"Latent interpolation, {kind.replace('_', '-')} test pairs "
            "(outer columns: the real test images)",
            written[-1],
        )

    written.append(out_dir / "latent_map.png")
    _latent_map_figure(written[-1], models, x_pixels, labels)
    written.append(out_dir / "curves.png")
    _curves_figure(written[-1], curves)
    return written


def _latent_map_figure(path: Path, models: dict, x_pixels, labels: np.ndarray) -> None:
    """Each model's encoder means of the test images, coloured by label: the latents
    themselves in 2-D, else their two principal directions."""
    import matplotlib.pyplot as plt
    import torch

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    colours = plt.get_cmap("tab10")
    for ax, (name, (model, _)) in zip(axes, models.items(), strict=True):
        with torch.no_grad():
            mu = model.encode(x_pixels)[0].numpy()
        centred = mu - mu.mean(0)
        if mu.shape[1] <= 2:
            coords, axis_names = centred, ["z1", "z2"][: mu.shape[1]]
        else:  # the two principal directions, with the share of variance each explains
            _, singular, directions = np.linalg.svd(centred, full_matrices=False)
            share = singular**2 / (singular**2).sum()
            coords = centred @ directions[:2].T
            axis_names = [f"PC{i + 1} ({share[i]:.0%} of variance)" for i in range(2)]
        for c in np.unique(labels):  # a categorical legend, not a colour bar
            ax.scatter(
                coords[labels == c, 0], coords[labels == c, -1], color=colours(int(c) % 10), s=4, label=str(c)
            )
        ax.set_xlabel(axis_names[0], fontsize=8)
        ax.set_ylabel(axis_names[-1], fontsize=8)
        ax.set_title(f"{name.upper()} encoder means of the test images", fontsize=9)
    axes[-1].legend(title="label", fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _curves_figure(path: Path, curves: dict[str, list[dict]]) -> None:
    """The per-epoch training and validation loss of each model that has a history."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    losses = {"vae": "−ELBO (recon + KL)", "ae": "reconstruction NLL"}  # not the same quantity
    for name, history in curves.items():
        if history:
            epochs = [h["epoch"] for h in history]
            ax.plot(epochs, [h["val_loss"] for h in history], label=f"{name.upper()} val {losses[name]}")
            ax.plot(
                epochs, [h["train_loss"] for h in history], "--", label=f"{name.upper()} train {losses[name]}"
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats/image")
    ax.set_title("training curves: the VAE's loss includes the KL term, the AE's does not", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def latent_2d_figures(out_dir: Path, pictures: dict, labels: np.ndarray, grid: int) -> list[Path]:
    """For 2-D latent models, side by side: the test set's latents coloured by class with the
    contours (1, 2, 3 sigma) of the distribution each model samples from (and, for the AE,
    of N(0, I), dashed), and the decoded grid over that distribution (the manifold picture)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    titles = {"vae": "VAE: prior N(0, I)", "ae": "AE: Gaussian fitted to its codes (N(0, I) dashed)"}
    angle = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angle), np.sin(angle)], 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (name, p) in zip(axes, pictures.items(), strict=True):
        scatter = ax.scatter(p["latents"][:, 0], p["latents"][:, 1], c=labels, cmap="tab10", s=5)
        for radius in (1, 2, 3):
            ellipse = p["mean"] + radius * circle @ p["chol"].T
            ax.plot(ellipse[:, 0], ellipse[:, 1], color="black", linewidth=0.8)
            if name == "ae":
                ax.plot(radius * circle[:, 0], radius * circle[:, 1], "--", color="grey", linewidth=0.8)
        ax.set_title(titles[name], fontsize=9)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
    fig.colorbar(scatter, ax=axes, ticks=range(10), label="label")
    written = [out_dir / "latents_2d.png"]
    with atomic_path(written[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, (name, p) in zip(axes, pictures.items(), strict=True):
        ax.imshow(image_grid(p["grid"], grid), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{titles[name]}\ndecoded at its quantile grid (z1 right, z2 up)", fontsize=9)
    written.append(out_dir / "manifold_2d.png")
    with atomic_path(written[1]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return written


STUDY_PANELS = (  # (title, [(metric key, label)], reference line)
    (
        "likelihood (nats, lower is better)",
        [("vae.iw_nll", "VAE IW-NLL"), ("vae.neg_elbo", "VAE −ELBO")],
        None,
    ),
    ("reconstruction BCE (nats)", [("recon_bce.vae", "VAE"), ("recon_bce.ae", "AE")], None),
    (
        "smoothness VAE/AE (< 1: VAE smoother)",
        [
            ("diff_class.ppl_normalized.ratio", "PPL/d², different class"),
            ("same_class.ppl_normalized.ratio", "PPL/d², same class"),
            ("diff_class.path_length_ratio.ratio", "path-length ratio, different class"),
        ],
        1.0,
    ),
    (
        "holes: share of samples unrecognised",
        [
            ("samples.unrecognised.vae", "VAE, prior samples"),
            ("samples.unrecognised.ae", "AE, Gaussian fitted to codes"),
            ("standard_normal.unrecognised.ae", "AE, N(0, I)"),
        ],
        None,
    ),
)


def study_figure(rows: list[dict], sweep: str, path: Path) -> None:
    """The study's four panels against one sweep axis ('beta' or 'latent_dim'): per-setting
    means with their intervals (seeds and evaluation, `vaectl.inference`) as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r[sweep] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, len(STUDY_PANELS), figsize=(4.2 * len(STUDY_PANELS), 3.6))
    for ax, (title, series, reference) in zip(axes, STUDY_PANELS, strict=True):
        present = [(k, label) for k, label in series if all(k in r["metrics"] for r in rows)]
        for key, label in present:
            m = [r["metrics"][key] for r in rows]
            mean = np.array([v["mean"] for v in m])
            # a share's or ratio's interval comes from another scale: it can miss the plain mean
            err = np.clip([[v["mean"] - v["ci"][0] for v in m], [v["ci"][1] - v["mean"] for v in m]], 0, None)
            ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=label)
        if reference is not None:
            ax.axhline(reference, color="grey", lw=0.8, ls="--")
        if sweep == "beta":
            ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.set_xlabel("beta" if sweep == "beta" else "latent size")
        ax.set_title(title, fontsize=9)
        if present:
            ax.legend(fontsize=7)
    seeds = len(rows[0]["seeds"])
    fig.suptitle(
        f"VAE vs AE against {'beta' if sweep == 'beta' else 'latent size'}: "
        f"mean of {seeds} training seeds, bars = 95% interval (seeds and evaluation)",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _roc(normal: np.ndarray, novel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) over every threshold, highest first."""
    thresholds = np.unique(np.concatenate([normal, novel]))[::-1]

    def flagged(scores: np.ndarray) -> np.ndarray:  # share with score >= each threshold
        return (len(scores) - np.searchsorted(np.sort(scores), thresholds, side="left")) / len(scores)

    return np.r_[0.0, flagged(normal)], np.r_[0.0, flagged(novel)]


def ood_figures(out_dir: Path, scores: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """`vaectl ood`: each score's histogram per set (bits/dim, the test split filled), and
    per novel set the ROC curve of each score against the test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    normal_name = next(iter(scores))
    names = list(scores[normal_name])
    to_bpd = 1 / (784 * np.log(2))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4))
    for ax, score in zip(axes, names, strict=True):
        pooled = np.concatenate([s[score] for s in scores.values()]) * to_bpd
        low, high = np.percentile(pooled, [0.5, 99.5])
        # the axis ends 2 test-split widths past the test split: a far set (noise) would
        # squeeze it into a few bins, and goes into the last bin instead
        normal_low, normal_high = np.percentile(scores[normal_name][score] * to_bpd, [0.5, 99.5])
        high = min(high, normal_high + 2 * (normal_high - normal_low))
        bins = np.linspace(float(low), float(high), 60)
        for set_name, s in scores.items():
            style = (
                {"histtype": "stepfilled", "alpha": 0.35} if set_name == normal_name else {"histtype": "step"}
            )
            ax.hist(
                np.clip(s[score] * to_bpd, bins[0], bins[-1]),
                bins=bins,
                density=True,
                label=set_name,
                **style,
            )
        ax.set_title(score, fontsize=9)
        ax.set_xlabel("bits/dim (higher = more novel; the last bin: all beyond)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    written = [out_dir / "scores.png", out_dir / "roc.png"]
    with atomic_path(written[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    novel = [n for n in scores if n != normal_name]
    fig, axes = plt.subplots(1, len(novel), figsize=(3.6 * len(novel), 3.6), squeeze=False)
    for ax, set_name in zip(axes[0], novel, strict=True):
        for score in names:
            fpr, tpr = _roc(scores[normal_name][score], scores[set_name][score])
            ax.plot(fpr, tpr, label=score)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
        ax.set_title(f"{normal_name} vs {set_name}", fontsize=9)
        ax.set_xlabel("false-positive rate")
    axes[0][0].set_ylabel("true-positive rate")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(written[1]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return written
