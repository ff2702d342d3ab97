"""``fedkd-mpi compare A.h5 B.h5 ...``: runs grouped by config keys, seeds folded into mean ± std.

The table has the shape of the paper's Table 1: final mentor and mentee metric, MB per client
(up + down), reduction against FedAvg on the mentor, and optionally the MB per client needed to
reach a target metric (:func:`mb_to_target`, the one definition that ``fedkd-mpi sweep`` and
``benchmarks/suite.py`` use too). Std is the sample standard deviation (ddof = 1), as for
"mean ± std over 5 runs" in the paper; with one run it is left out.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedkd_mpi.analysis import plots
from fedkd_mpi.analysis.reader import MODELS, Run, config_get
from fedkd_mpi.analysis.spread import last_values, paired, spread, t_interval

IGNORED_KEYS = {"seed", "output"}


@dataclass(frozen=True)
class MetricSpec:
    """Which model's which metric: model None means the run's own model (mentor if it has one)."""

    model: str | None
    name: str | None  # None: the file's headline metric (root attr metric_name)

    @classmethod
    def parse(cls, text: str | None) -> MetricSpec:
        """``auto`` | ``mentor`` | ``mentee`` | ``NAME`` | ``mentor_NAME`` | ``mentee_NAME``."""
        if text in (None, "", "auto"):
            return cls(None, None)
        if text in MODELS:
            return cls(text, None)
        for m in MODELS:
            if text.startswith(f"{m}_"):
                return cls(m, text[len(m) + 1:])
        return cls(None, text)

    def column(self, run: Run) -> tuple[str, str]:
        """(rounds column, label) for this run; KeyError when the run lacks the metric."""
        name = self.name or run.summary.metric_name
        if name not in run.summary.metric_names:
            raise KeyError(f"{run.path}: no metric {name!r} (it has "
                           f"{', '.join(run.summary.metric_names)})")
        models = [self.model] if self.model else list(MODELS)
        for m in models:
            col = run.metric_column(m, name)
            if col in run.rounds and np.isfinite(run.rounds[col].to_numpy(float)).any():
                return col, f"{m} {plots.pretty_metric(name)}"
        return run.metric_column(models[-1], name), f"{models[-1]} {plots.pretty_metric(name)}"


def parse_keys(key: str | Sequence[str]) -> list[str]:
    """``"algorithm,seed"`` or ``["algorithm", "seed"]`` -> the dotted keys to group by."""
    parts = key.split(",") if isinstance(key, str) else list(key)
    keys = [k.strip() for k in parts if k.strip()]
    if not keys:
        raise KeyError(f"group-by {key!r}: give one or more dotted config keys (a,b)")
    return keys


def group_value(run: Run, key: str) -> str:
    try:
        v = config_get(run.config, key)
    except KeyError as exc:
        raise KeyError(f"{run.path}: config has no key {exc.args[0]!r} (group-by {key!r})") \
            from None
    return v if isinstance(v, str) else str(v)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: repr(tree)}


def mixed_keys(runs: list[Run], key: str | Sequence[str]) -> list[str]:
    """Config keys (other than the group keys, seed, output) that differ within the group."""
    group = parse_keys(key)
    flats = [_flat(r.config) for r in runs]
    keys = set().union(*flats) if flats else set()
    return sorted(k for k in keys if k not in IGNORED_KEYS and k not in group
                  and not any(k.startswith(f"{g}.") for g in group)
                  and len({f.get(k, "<absent>") for f in flats}) > 1)


def mb_to_target(run: Run, target: float, metric: str | MetricSpec | None = None
                 ) -> tuple[float, float]:
    """(cumulative MB per client up + down, 1-based round) at the first round where the run's
    metric (``--metric``: auto = its own model) is >= ``target``; (nan, nan) if never.

    Per run: a group's figure is the mean over the runs that reach the target ((k/n))."""
    spec = metric if isinstance(metric, MetricSpec) else MetricSpec.parse(metric)
    col, _ = spec.column(run)
    hit = np.flatnonzero(run.rounds[col].to_numpy(float) >= target)
    if not len(hit):
        return math.nan, math.nan
    return (float(run.rounds["cum_mb_per_client"].iloc[hit[0]]),
            float(run.rounds["round"].iloc[hit[0]]))


def run_row(run: Run, spec: MetricSpec, target: float | None) -> dict[str, Any]:
    s = run.summary
    row: dict[str, Any] = {"path": str(run.path), "status": s.status,
                           "rounds": s.rounds_completed, "seed": s.seed}
    name = spec.name or s.metric_name
    for m in MODELS:
        row[f"final_{m}"] = s.final.get(f"{m}_{name}", math.nan)
        sp = spread(run, m, name=name)
        row[f"worst_{m}"] = sp.worst if sp is not None else math.nan
    row["mb_per_client"] = s.mb_per_client
    row["mb_up_per_client"] = s.mb_up_per_client
    row["mb_down_per_client"] = s.mb_down_per_client
    row["reduction_vs_mentor_fedavg"] = s.reduction_vs_mentor_fedavg
    if target is not None:
        row["mb_to_target"], row["round_to_target"] = mb_to_target(run, target, spec)
    return row


VALUE_COLS = ["final_mentor", "final_mentee", "worst_mentor", "worst_mentee", "mb_per_client",
              "reduction_vs_mentor_fedavg", "mb_to_target"]


def _value_or_none(run: Run, key: str) -> str | None:
    try:
        return group_value(run, key)
    except KeyError:
        return None


def per_run_table(runs: list[Run], key: str | Sequence[str], spec: MetricSpec,
                  target: float | None) -> pd.DataFrame:
    """One row per run: ``group`` (the key values joined by ', '), ``label`` (k1=v1, k2=v2),
    one column per group key, the values; a key missing from some (older) files groups them
    as '(absent)'."""
    keys = parse_keys(key)
    values = [[_value_or_none(r, k) for k in keys] for r in runs]
    for j, k in enumerate(keys):
        if all(v[j] is None for v in values):
            group_value(runs[0], k)  # raises the one-line error
    rows = []
    for r, v in zip(runs, values, strict=True):
        shown = ["(absent)" if x is None else x for x in v]
        rows.append({"group": ", ".join(shown), **dict(zip(keys, shown, strict=True)),
                     **run_row(r, spec, target),
                     "label": ", ".join(f"{k}={x}" for k, x in zip(keys, shown, strict=True))})
    return pd.DataFrame(rows)


def fold(per_run: pd.DataFrame, key: str | Sequence[str] = ()) -> pd.DataFrame:
    """Per group: the group keys' values, n, and mean/std/n of every value column (NaN-aware:
    n counts finite values)."""
    keys = parse_keys(key) if key else []
    out = []
    for g, sub in per_run.groupby("group", sort=False):
        row: dict[str, Any] = {"group": g, **{k: sub[k].iloc[0] for k in keys if k in sub},
                               "n": len(sub)}
        for c in VALUE_COLS:
            if c not in sub:
                continue
            v = sub[c].to_numpy(float)
            v = v[np.isfinite(v)]
            row[f"{c}_mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{c}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            row[f"{c}_n"] = len(v)
        out.append(row)
    return pd.DataFrame(out)


def _pm(mean: float, std: float, n: int, total: int, digits: int, missing: str = "–") -> str:
    if not math.isfinite(mean):
        return missing if missing == "–" else f"{missing} (0/{total})"
    txt = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")
    return txt + (f" ({n}/{total})" if n != total else "")


def markdown(folded: pd.DataFrame, key: str | Sequence[str], metric: str, target: float | None,
             target_label: str) -> str:
    keys = parse_keys(key)
    headers = [*keys, "n", f"final mentor {metric}", f"final mentee {metric}",
               "MB / client (up+down)", "reduction × vs mentor FedAvg"]
    headers[len(keys) + 3:len(keys) + 3] = ["worst client mentor", "worst client mentee"]
    cols = [("final_mentor", 4, "–"), ("final_mentee", 4, "–"), ("worst_mentor", 4, "–"),
            ("worst_mentee", 4, "–"), ("mb_per_client", 4, "–"),
            ("reduction_vs_mentor_fedavg", 1, "–")]
    if target is not None:
        headers.append(f"MB / client to {target_label} ≥ {target:g}")
        cols.append(("mb_to_target", 4, "not reached"))
    rows = []
    for _, r in folded.iterrows():
        total = int(r["n"])
        own = ([str(r[k]) for k in keys] if all(k in r for k in keys) and len(keys) > 1
               else [str(r["group"])])
        rows.append([*own, total] + [
            _pm(r[f"{c}_mean"], r[f"{c}_std"], int(r[f"{c}_n"]), total, d, miss)
            for c, d, miss in cols])
    table = pd.DataFrame(rows, columns=headers)
    return table.to_markdown(index=False, disable_numparse=True)


def _own_model(run: Run, spec: MetricSpec) -> str:
    """The model a run is scored on: the asked one, else its mentor if it has one."""
    if spec.model:
        return spec.model
    return next((m for m in MODELS if last_values(run, m, name=spec.name)[1].size), MODELS[-1])


def paired_markdown(runs: list[Run], groups: list[str], baseline: str, spec: MetricSpec,
                    labels: dict[str, str]) -> str:
    """Every group minus the ``baseline`` group, paired by seed over the same clients (each
    run's last evaluated round): per-seed mean differences, their mean and 95 % t-interval
    over seeds, and the clients (over all seeds) where the group is better."""
    if baseline not in groups:
        raise KeyError(f"--baseline {baseline!r} is not a group (groups: "
                       f"{', '.join(dict.fromkeys(groups))})")
    base = {r.summary.seed: r for r, g in zip(runs, groups, strict=True) if g == baseline}
    rows = []
    for g in dict.fromkeys(groups):
        if g == baseline:
            continue
        diffs, wins, n = [], 0, 0
        for r in (r for r, gg in zip(runs, groups, strict=True) if gg == g):
            b = base.get(r.summary.seed)
            p = None if b is None else paired(r, b, _own_model(r, spec), _own_model(b, spec),
                                               name=spec.name)
            if p is not None:
                diffs.append(p.mean)
                wins, n = wins + p.wins, n + p.n
        if not diffs:
            rows.append([labels.get(g, g), "0", "–", "–", "–", "–"])
            continue
        lo, hi = t_interval(np.array(diffs))
        rows.append([labels.get(g, g), str(len(diffs)), ", ".join(f"{d:+.4f}" for d in diffs),
                     f"{np.mean(diffs):+.4f}",
                     f"[{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else "–", f"{wins}/{n}"])
    head = [f"minus {labels.get(baseline, baseline)}", "seeds paired", "per seed (mean over "
            "clients)", "mean", "95 % CI over seeds", "clients better"]
    return pd.DataFrame(rows, columns=head).to_markdown(index=False, disable_numparse=True)


def curves_figure(runs: list[Run], groups: list[str], spec: MetricSpec, out: Path, fmt_: str,
                  labels: dict[str, str]) -> Path:
    """Metric against cumulative MB per client: one line per group (mean over runs, ± std).

    With ``--metric auto`` a group whose own model is the mentor also gets its mentee, dashed,
    so that the mentee of FedKD and a mentee trained by FedAvg can be read side by side."""
    fig, ax = plots.figure(6.8, 4.4)
    colors = plots.plt.get_cmap("tab10").colors
    xs_all: list[float] = []
    names: set[str] = set()
    for i, g in enumerate(dict.fromkeys(groups)):
        members = [r for r, gg in zip(runs, groups, strict=True) if gg == g]
        n = min(len(r.rounds) for r in members)
        if n == 0:
            continue
        cols = [spec.column(r) for r in members]
        models = sorted({lbl.split(" ")[0] for _, lbl in cols})
        names.update(lbl.split(" ", 1)[1] for _, lbl in cols)
        lines = [(cols, "-", ", ".join(models))]
        if spec.model is None and models == ["mentor"]:
            lines.append(([(r.metric_column("mentee", spec.name), "") for r in members], "--",
                          "mentee"))
        x = np.stack([r.rounds["cum_mb_per_client"].to_numpy(float)[:n] for r in members])
        xm = x.mean(axis=0)
        xs_all += list(xm)
        color = colors[i % len(colors)]
        for line_cols, ls, model in lines:
            y = np.stack([r.rounds[c].to_numpy(float)[:n]
                          for r, (c, _) in zip(members, line_cols, strict=True)])
            if not np.isfinite(y).any():
                continue
            ym = y.mean(axis=0)
            ax.plot(xm, ym, marker="o" if ls == "-" else "s", ls=ls, color=color,
                    label=f"{labels.get(g, g)}: {model} (n={len(members)})")
            if len(members) > 1:
                ys = y.std(axis=0, ddof=1)
                ax.fill_between(xm, ym - ys, ym + ys, color=color,
                                alpha=0.2 if ls == "-" else 0.1)
    plots.log_if_decades(ax, np.array(xs_all))
    ax.set_xlabel("cumulative MB per client (up + down), mean over runs")
    metric = " / ".join(sorted(names)) if names else "metric"
    ax.set_ylabel(f"{metric} (mean over clients)")
    ax.set_title("one point per round; mean over runs (seeds), shaded: ± 1 std", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return plots.save(fig, out, "compare_metric_vs_mb", fmt_)


def compare(runs: list[Run], key: str | Sequence[str] = "algorithm", metric: str | None = None,
            target: float | None = None, out: Path | None = None,
            fmt_: str = "png", baseline: str | None = None
            ) -> tuple[str, pd.DataFrame, pd.DataFrame, list[Path]]:
    """Markdown table, folded table, per-run table and written files (CSV, markdown, figure).

    ``key``: one dotted config key or several (``"algorithm,seed"`` or a list);
    ``baseline``: a group (its key values joined by ', ') every other group is paired with."""
    spec = MetricSpec.parse(metric)
    keys = parse_keys(key)
    per_run = per_run_table(runs, keys, spec, target)
    folded = fold(per_run, keys)
    labels = dict(zip(per_run["group"], per_run["label"], strict=True))
    name = spec.name or runs[0].summary.metric_name
    target_label = f"{spec.model} {name}" if spec.model else f"{name} (mentor, else mentee)"
    md = markdown(folded, keys, name, target, target_label)
    if baseline is not None:
        md += "\n\n" + paired_markdown(runs, list(per_run["group"]), baseline, spec, labels)
    notes = []
    for g in folded["group"]:
        members = [r for r, gg in zip(runs, per_run["group"], strict=True) if gg == g]
        mixed = mixed_keys(members, keys)
        if mixed:
            shown = ", ".join(mixed[:6]) + (" ..." if len(mixed) > 6 else "")
            notes.append(f"note: group {labels[g]} mixes runs that differ in {shown}")
        bad = [r for r in members if not r.summary.complete]
        for r in bad:
            notes.append(f"note: {r.path} is {r.summary.status} "
                         f"({r.summary.rounds_completed} rounds); its last round is used")
        rounds = {r.summary.rounds_completed for r in members}
        if len(rounds) > 1:
            notes.append(f"note: group {labels[g]} has runs of {sorted(rounds)} rounds; the curve "
                         f"stops at {min(rounds)}")
    if target is not None:
        notes.append(f"MB to target: cumulative MB per client at the first round where the "
                     f"run's {target_label} reaches {target:g}; (k/n): only k of n runs reached "
                     "it, the mean is over those")
    notes.append("mean ± sample std (ddof=1) over the runs of each group; (k/n): value present "
                 "in k of n runs; –: no such model; worst client: the lowest client's value in "
                 "the last evaluated round (mean over runs)")
    text = md + "\n\n" + "\n".join(notes)
    written: list[Path] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text + "\n")
        folded.to_csv(out / "compare.csv", index=False)
        per_run.to_csv(out / "compare_runs.csv", index=False)
        written += [out / "compare.md", out / "compare.csv", out / "compare_runs.csv"]
        written.append(curves_figure(runs, list(per_run["group"]), spec, out, fmt_, labels))
    return text, folded, per_run, written


def main_compare(paths: list[str], key: str | Sequence[str], metric: str | None,
                 target: float | None, out: Path | None, fmt_: str,
                 baseline: str | None = None) -> str:
    from fedkd_mpi.analysis.reader import load

    runs = [load(p) for p in paths]
    text, _, _, written = compare(runs, key, metric, target, out, fmt_, baseline)
    if written:
        text += "\n\nwrote " + ", ".join(str(p) for p in written)
    print(text, file=sys.stdout)
    return text
