"""verify-unlearning's figures and report: ratios derived from a result, its Markdown table,
and the `evaluate unlearning` report files."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..config import EXPERIMENTS
from ..progress import Progress
from .reports import write_report

MODELS = ("nothing", "newton", "refined", "refined_full", "retrained", "noise_floor")


def derived_figures(result: dict) -> dict:
    """Figures computed from the raw numbers of a verify-unlearning result, stored with it.
    Per experiment and set: KL ratio = KL(nothing) / KL(model) for every model with KL > 0
    (the noise floor included) and the fraction of KL(nothing) a model closes; label repair:
    retraining's accuracy gain over the untouched model. Removal: each set's predicted / actual
    test-loss change, their median absolute ratio (how far off the prediction's scale is) and
    the fraction of sets where the two have the same sign."""
    out: dict = {}
    for exp in EXPERIMENTS:
        sets = result.get(exp, {}).get("sets", {})
        if not sets:
            continue
        ratio, closed = {}, {}
        for name, row in sets.items():
            base = row["nothing"]["kl"]
            models = [m for m in MODELS if m in row and m != "nothing" and row[m]["kl"] > 0]
            ratio[name] = {m: base / row[m]["kl"] for m in models}
            closed[name] = {m: 1 - row[m]["kl"] / base for m in models if base > 0}
        out[exp] = {"kl_ratio": ratio, "kl_closed": closed}
        if exp == "relabel":  # what "accuracy recovered" is a fraction of
            out[exp]["accuracy_gain"] = {name: row["retrained"]["accuracy"]
                                         - row["nothing"]["accuracy"]
                                         for name, row in sets.items()}
    points = result.get("remove", {}).get("test_loss_change", {})
    pairs = {k: (p["predicted"], p["actual"]) for k, p in points.items() if p["actual"]}
    if pairs:
        over = {k: pred / act for k, (pred, act) in pairs.items()}
        out["remove"]["predicted_over_actual"] = over
        out["remove"]["prediction_scale_median"] = statistics.median(abs(v) for v in over.values())
        out["remove"]["sign_agreement"] = sum(v > 0 for v in over.values()) / len(over)
    return out


def markdown_table(result: dict) -> str:
    """One row per (experiment, set, model): KL, KL(nothing) / KL, agreement, accuracy, accuracy
    recovered, edited objective J; then the calibration, Pearson and latency."""
    header = ("| experiment | set (size) | model | KL to retrained | KL ratio | agreement | "
              "test acc | acc recovered | objective J |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for exp in EXPERIMENTS:
        for name, row in result.get(exp, {}).get("sets", {}).items():
            for m in (m for m in MODELS if m in row):
                r, rec, obj = row[m], row[m].get("accuracy_recovered"), row[m].get("objective")
                ratio = row["nothing"]["kl"] / r["kl"] if r["kl"] > 0 else float("inf")
                lines.append(f"| {exp} | {name} ({row['size']}) | {m} | {r['kl']:.5f} | "
                             f"{ratio:.2f} | {r['agreement']:.4f} | {r['accuracy']:.4f} | "
                             f"{'' if rec is None else f'{rec:.2f}'} | "
                             f"{'' if obj is None else f'{obj:.5f}'} |")
    rem = result.get("remove", {})
    if "calibration" in rem:
        cal = rem["calibration"]
        lines.append(f"\nDamping {rem['damping']:.4g} = {cal['multiple_of_weight_decay']:g} x "
                     f"weight decay, calibrated on held-out sets {cal['sets']}: geomean KL ratio "
                     + ", ".join(f"{c:g}x: {v:.3f}" for c, v in cal["geomean_kl_ratio"].items()))
    if "pearson_test_loss_change" in rem:
        lines.append(f"Pearson(predicted delta . grad test loss, actual change, mean of seeds 0/1)"
                     f" over {len(rem['sets'])} removal sets: {rem['pearson_test_loss_change']:.3f}"
                     "; each model's own test-loss change: " + ", ".join(
                         f"{m} {v:.3f}" for m, v in rem.get("pearson_by_model", {}).items()))
    if "latency" in rem:
        lines.append("Latency (median s): " + ", ".join(
            f"{k} {v:.4f}" for k, v in rem["latency"].items()))
    return "\n".join(lines)


def unlearning_figure(result: dict):
    """KL(retrained || model) per removal / relabel set and model (log scale)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for exp in ("remove", "relabel"):
        for name, row in result.get(exp, {}).get("sets", {}).items():
            kinds = [k for k, v in row.items() if isinstance(v, dict) and "kl" in v]
            fig.add_trace(go.Bar(name=f"{exp}: {name}", x=kinds, y=[row[k]["kl"] for k in kinds]))
    fig.update_layout(yaxis_title="KL(retrained || model)", yaxis_type="log", barmode="group")
    return fig


def run_unlearning_report(dataset: str, model: str, out: Path, data_root: str | None,
                          progress: Progress) -> str:
    """verify_unlearning with the default VerifyConfig for dataset/model, written as report
    unlearning_<dataset>_<model> in `out`; returns its Markdown table."""
    from ..config import VerifyConfig
    from .unlearning import verify_unlearning

    res = verify_unlearning(VerifyConfig(dataset=dataset, model=model), data_root, progress)
    md = markdown_table(res)
    write_report(out, f"unlearning_{dataset}_{model}", res, md, {"kl": unlearning_figure(res)})
    return md
