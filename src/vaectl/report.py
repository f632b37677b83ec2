"""VAE-vs-AE comparison rows, shared by the evaluate table, the model card and the registry."""

from __future__ import annotations

LOWER_IS_BETTER = ("neg_elbo", "iw_nll", "bits_per_dim", "recon_bce", "recon_mse",
                   "path_length_ratio", "step_unevenness", "ppl", "entropy")
NOT_COMPARED = ("iw_k", "active_units")  # settings and counts, not better or worse


def flatten_model_metrics(m: dict) -> dict:
    """{'iw_nll': .., 'same_class': {'ppl': ..}} -> {'iw_nll': .., 'same_class.ppl': ..}."""
    flat = {k: v for k, v in m.items() if not isinstance(v, dict)}
    for group, values in m.items():
        if isinstance(values, dict):
            flat.update({f"{group}.{k}": v for k, v in values.items()})
    return flat


def compare(vae: dict, ae: dict) -> list[tuple[str, float | None, float | None, str]]:
    """Rows (metric, vae, ae, better) for every metric either model has."""
    rows = []
    for name in list(dict.fromkeys([*vae, *ae])):
        a, b = vae.get(name), ae.get(name)
        better = ""
        if a is not None and b is not None and a != b and name not in NOT_COMPARED:
            lower = any(name.endswith(k) for k in LOWER_IS_BETTER)
            better = "vae" if (a < b) == lower else "ae"
        rows.append((name, a, b, better))
    return rows
