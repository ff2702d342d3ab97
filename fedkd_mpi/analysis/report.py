"""``fedkd-mpi report RUN.h5``: a terminal summary and a folder of figures for one run."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from fedkd_mpi.analysis import plots
from fedkd_mpi.analysis.reader import MODELS, PHASE_LABELS, PHASES, Run, config_get
from fedkd_mpi.analysis.spread import paired, paired_text, spread_rows
from fedkd_mpi.config import changed_settings


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _cfg(run: Run, key: str, default: Any = "?") -> Any:
    try:
        return config_get(run.config, key)
    except KeyError:
        return default


def _svd(run: Run, key: str) -> Any:
    """An SVD codec setting (``svd.*``; ``fedkd.*`` in files written before it moved)."""
    value = _cfg(run, f"svd.{key}", None)
    return value if value is not None else _cfg(run, f"fedkd.{key}")


def _model_desc(run: Run, role: str) -> str:
    m = _cfg(run, f"model.{role}", None)
    if not isinstance(m, dict):
        return "?"
    kind = _cfg(run, "model.kind", None)
    desc = f"{m.get('layers', '?')} layers x {m.get('hidden', '?')} wide"
    return f"{kind} {desc}" if kind not in (None, "tiny") else desc


def summary_rows(run: Run) -> list[list[str]]:
    """The terminal summary as (label, value) rows."""
    s = run.summary
    alg = s.algorithm
    rows = [["run file", f"{run.path} (format_version {s.format_version})"],
            ["status", s.status_note],
            ["rounds", f"{s.rounds_completed} of {s.rounds_planned or '?'}"]]
    alg_desc = alg
    if alg == "fedavg":
        alg_desc += f" (shared model: {_cfg(run, 'fedavg.model')})"
    elif alg == "local":
        alg_desc += f" (model: {_cfg(run, 'local.model')})"
    rows += [["algorithm", alg_desc],
             ["aggregator", str(_cfg(run, "train.aggregation", "uniform"))],
             ["non-default settings", textwrap.fill(" ".join(changed_settings(run.config))
                                                    or "(all defaults)", 72)],
             ["seed / clients / ranks", f"{s.seed} / {s.num_clients} / {s.world_size}"],
             ["data", f"{_cfg(run, 'data.name')}, {_cfg(run, 'data.partition')} partition"],
             ["mentor / mentee", f"{_model_desc(run, 'mentor')} / {_model_desc(run, 'mentee')}"]]
    classes = run.attrs.get("class_names")
    if classes is not None and len(classes):
        rows.append(["classes", ", ".join(str(c) for c in classes)])
    if run.attrs.get("data_path"):
        test = (f" + {run.attrs.get('data_test_rows')} test" if run.attrs.get("data_test_path")
                else "")
        rows.append(["data source", f"{run.attrs['data_path']} ({run.attrs.get('data_rows')} "
                     f"rows{test}, sha256 {str(run.attrs.get('data_sha256', ''))[:12]})"])
    codec = _cfg(run, "fedkd.codec" if alg == "fedkd" else "fedavg.codec", None)
    if codec is not None:
        rows.append(["codec", str(codec)])
    if codec == "svd" or (alg == "fedkd" and codec is None):  # None: files before svd.*
        rows.append(["energy threshold T", f"{_svd(run, 't_start')} -> "
                     f"{_svd(run, 't_end')} ({_svd(run, 'schedule')} schedule)"])
    for name in s.metric_names:
        for m in MODELS:
            rows.append([f"final {m} {name} (mean over clients)", fmt(s.final[f"{m}_{name}"])])
    if math.isfinite(s.majority_rate):
        rows.append(["majority-class rate of the held-out data", fmt(s.majority_rate)])
    rows += spread_rows(run)
    parts = loss_parts(run)
    if parts:
        rows.append(["loss parts, last round (mean over clients)",
                     textwrap.fill(", ".join(f"{k} {v:.4f}" for k, v in parts.items()), 72)])
    c = run.clients
    if "participated" in c and len(c):
        per_round = c.groupby("round")["participated"].sum()
        rows.append(["clients per round (participants)",
                     f"{per_round.mean():.1f} of {s.num_clients} on average"])
    if "skipped" in c and len(c) and c["skipped"].sum() > 0:
        rows.append(["updates skipped (non-finite)", str(int(c["skipped"].sum()))])
    resumed = run.attrs.get("resumed_from_round")
    if resumed is not None and len(np.atleast_1d(resumed)):
        rows.append(["resumed from round", ", ".join(str(int(x))
                                                     for x in np.atleast_1d(resumed))])
    rows += [["MB up per client (total)", fmt(s.mb_up_per_client)],
             ["MB down per client (total)", fmt(s.mb_down_per_client)],
             ["MB per client, mentee sent dense", fmt(s.dense_mb_mentee_per_client)],
             ["MB per client, FedAvg on the mentor", fmt(s.dense_mb_mentor_per_client)],
             ["reduction vs FedAvg on the mentor", _x(s.reduction_vs_mentor_fedavg)],
             ["reduction vs mentee sent dense", _x(s.reduction_vs_dense_mentee)]]
    return rows


def loss_parts(run: Run) -> dict[str, float]:
    """The algorithm's recorded loss parts (``rounds/loss_<part>``) in the last round."""
    r = run.rounds
    return {c[5:]: float(r[c].iloc[-1]) for c in r.columns
            if c.startswith("loss_") and len(r) and np.isfinite(r[c].iloc[-1])}


def _x(v: float) -> str:
    return "n/a (no communication)" if not math.isfinite(v) else f"{v:.1f}x"


def timing_rows(run: Run) -> tuple[list[list[str]], str]:
    """Mean seconds per round by phase; round 1 (start-up) left out when there are 3+ rounds."""
    r = run.rounds
    if not len(r):
        return [], "no completed rounds"
    sel = r.iloc[1:] if len(r) >= 3 else r
    note = (f"mean over rounds {int(sel['round'].iloc[0])}-{int(sel['round'].iloc[-1])}"
            + (f"; round 1 took {r['wall_time_s'].iloc[0]:.2f} s including start-up"
               if len(r) >= 3 and "wall_time_s" in r else ""))
    wall = float(sel["wall_time_s"].mean()) if "wall_time_s" in sel else math.nan
    rows = []
    for p in PHASES:
        v = float(sel[f"phase_{p}_s"].mean())
        share = f"{100 * v / wall:.0f} %" if wall and math.isfinite(wall) and wall > 0 else ""
        rows.append([PHASE_LABELS[p], f"{v:.3f}", share])
    rows.append(["round (wall, rank 0)", f"{wall:.3f}", "100 %"])
    return rows, note


def paired_rows(run: Run, base: Run) -> list[list[str]]:
    """Per-client paired differences against ``base`` for every model and split both have."""
    rows = []
    for split in ("test", "val"):
        for m in MODELS:
            p = paired(run, base, m, split=split)
            if p is not None:
                where = "held-out" if split == "test" else "validation"
                rows.append([f"{m} {where} minus {base.path.name}", paired_text(p)])
    return rows


def text(run: Run, base: Run | None = None) -> str:
    out = [tabulate(summary_rows(run), tablefmt="simple", disable_numparse=True)]
    out.append("(reductions: bytes up+down per client against the same messages carrying that "
               "model dense, header included)")
    if base is not None:
        rows = paired_rows(run, base) or [["paired difference", "no model and client in "
                                           f"common with {base.path}"]]
        out += ["", tabulate(rows, headers=["paired, per client", "difference"],
                             tablefmt="simple", disable_numparse=True)]
    rows, note = timing_rows(run)
    if rows:
        out.append("")
        out.append(tabulate(rows, headers=["time per round", "s", "share"], tablefmt="simple",
                            disable_numparse=True))
        out.append(f"({note}; client phases: slowest client rank; share: of rank 0's round "
                   "wall time, phases on different ranks overlap so shares need not add to 100 %)")
    return "\n".join(out)


# ---- figures ---------------------------------------------------------------------------------

def _metric_cols(run: Run) -> list[tuple[str, str, str]]:
    """(model, metric name, rounds column) for every metric with at least one finite value."""
    out = []
    for i, name in enumerate(run.summary.metric_names):
        for m in MODELS:
            col = f"{m}_metric" if i == 0 else f"{m}_{name}"
            if col in run.rounds and np.isfinite(run.rounds[col].to_numpy(float)).any():
                out.append((m, name, col))
    return out


def _title(run: Run) -> str:
    s = run.summary
    extra = "" if s.complete else f"  [{s.status}: {s.rounds_completed} rounds]"
    return f"{run.path.name}: {s.algorithm}, seed {s.seed}{extra}"


def fig_metric_vs_round(run: Run, out: Path, fmt_: str) -> Path:
    r = run.rounds
    head = run.summary.metric_name
    cols = _metric_cols(run)
    names = list(dict.fromkeys(name for _, name, _ in cols))
    fig, ax = plots.figure(7.6 if len(names) > 1 else 6.4, 4.0)
    styles = ["-", "--", ":", "-."]
    for m, name, col in cols:
        ax.plot(r["round"], r[col], ls=styles[names.index(name) % len(styles)],
                label=f"{m} {plots.pretty_metric(name)}", **plots.MODEL_STYLE[m])
    ax.set_xlabel("round")
    what = plots.pretty_metric(head) if len(names) == 1 else "metric"
    ax.set_ylabel(f"{what} on held-out data (mean over clients)")
    ax.set_title(_title(run), fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if len(names) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend()
    return plots.save(fig, out, "metric_vs_round", fmt_)


def fig_metric_vs_mb(run: Run, out: Path, fmt_: str) -> Path:
    """Metric against cumulative MB per client, with the dense references after R rounds."""
    fig, ax = plots.figure()
    r, s = run.rounds, run.summary
    x = r["cum_mb_per_client"].to_numpy(float)
    head = s.metric_name
    for m, name, col in _metric_cols(run):
        if name != head:
            continue
        ax.plot(x, r[col], label=f"{m} ({s.algorithm})", **plots.MODEL_STYLE[m])
    refs = [(s.dense_mb_mentee_per_client, "mentee sent dense", "tab:green"),
            (s.dense_mb_mentor_per_client, "FedAvg on the mentor", "tab:red")]
    xs = list(x)
    for v, label, color in refs:
        if math.isfinite(v) and v > 0 and not (s.algorithm == "fedavg" and
                                               abs(v - x[-1]) / v < 1e-9):
            ax.axvline(v, color=color, ls=":", lw=1.5,
                       label=f"{label}: {v:.3g} MB for the same {s.rounds_completed} rounds")
            xs.append(v)
    plots.log_if_decades(ax, np.array(xs))
    ax.set_xlabel("cumulative MB per client (up + down)")
    ax.set_ylabel(f"{plots.pretty_metric(head)} (mean over clients)")
    ax.set_title(_title(run), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return plots.save(fig, out, "metric_vs_mb", fmt_)


def fig_rank_heatmap(run: Run, out: Path, fmt_: str) -> Path | None:
    """Server broadcast K per factorised layer over rounds, with T_r above it; only for a
    codec whose meta is a rank (attr ``layer_meta``; files before it: the SVD codec's)."""
    codec = _cfg(run, "fedkd.codec" if run.summary.algorithm == "fedkd" else "fedavg.codec",
                 None)
    if run.attrs.get("layer_meta", "rank" if codec in (None, "svd") else "") != "rank":
        return None
    lay = run.layers
    if not len(lay) or not ((lay["rank_down"] >= 0).any() or lay["rank_up_mean"].notna().any()):
        return None
    factored = sorted(set(lay.loc[(lay["rank_down"] >= 0) | lay["rank_up_mean"].notna(),
                                  "layer"]))
    sub = lay[lay["layer"].isin(factored)]
    rounds = sorted(sub["round"].unique())
    names = [sub.loc[sub["layer"] == i, "name"].iloc[0] for i in factored]
    full = [int(sub.loc[sub["layer"] == i, "full_rank"].iloc[0]) for i in factored]
    k = (sub.pivot(index="layer", columns="round", values="rank_down")
         .reindex(index=factored, columns=rounds).to_numpy(float))
    share = np.where(k >= 0, k / np.array(full)[:, None], np.nan)
    nl, nr = share.shape
    h = min(2.0 + 0.22 * nl, 14.0)
    w = min(4.5 + 0.45 * nr, 14.0)
    fig, (ax_t, ax) = plots.plt.subplots(
        2, 1, figsize=(w, h + 1.2), height_ratios=[1.2, h], sharex=True, layout="constrained")
    thr = run.rounds.set_index("round")["energy_threshold"].reindex(rounds)
    ax_t.plot(rounds, thr, marker="o", color="black")
    ax_t.set_ylabel("T (energy\nkept)")
    ax_t.grid(alpha=0.3)
    ax_t.set_title(f"{_title(run)}\nserver broadcast rank K per layer "
                   "(text: K; colour: K / full rank)", fontsize=10)
    cmap = plots.plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(share), aspect="auto", cmap=cmap, vmin=0, vmax=1,
                   extent=(rounds[0] - 0.5, rounds[-1] + 0.5, nl - 0.5, -0.5),
                   interpolation="nearest")
    if nl * nr <= 400:
        for i in range(nl):
            for j, rnd in enumerate(rounds):
                txt = "dense" if not np.isfinite(share[i, j]) else str(int(k[i, j]))
                ax.text(rnd, i, txt, ha="center", va="center", fontsize=7,
                        color="white" if np.isfinite(share[i, j]) and share[i, j] < 0.6
                        else "black")
    ax.set_yticks(range(nl), [f"{n} ({f})" for n, f in zip(names, full, strict=True)],
                  fontsize=7 if nl > 20 else 8)
    ax.set_xlabel("round")
    ax.set_ylabel("layer (full rank)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.colorbar(im, ax=ax, label="K / full rank (grey: sent dense)", shrink=0.8)
    return plots.save(fig, out, "svd_rank", fmt_)


def fig_client_spread(run: Run, out: Path, fmt_: str) -> Path | None:
    c = run.clients
    models = [m for m in MODELS if f"{m}_metric" in c
              and np.isfinite(c[f"{m}_metric"].to_numpy(float)).any()]
    if not models or not len(c):
        return None
    fig, axes = plots.plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0),
                                   sharey=True, squeeze=False, layout="constrained")
    n = run.summary.num_clients
    for ax, m in zip(axes[0], models, strict=True):
        p = c.pivot(index="round", columns="client", values=f"{m}_metric")
        color = plots.MODEL_STYLE[m]["color"]
        if n <= 10:  # few clients: one line each
            cmap = plots.plt.get_cmap("tab10")
            for j, cl in enumerate(p.columns):
                ax.plot(p.index, p[cl], color=cmap(j), lw=1.0, marker=".", alpha=0.8,
                        label=f"client {cl}")
        else:  # many: quantile bands
            q = p.quantile([0.0, 0.25, 0.75, 1.0], axis=1).T
            ax.fill_between(p.index, q[0.0], q[1.0], color=color, alpha=0.15, label="min-max")
            ax.fill_between(p.index, q[0.25], q[0.75], color=color, alpha=0.35,
                            label="25-75 %")
        ax.plot(p.index, p.mean(axis=1), color="black", lw=2.2, label="mean over clients")
        ax.set_title(f"{m}: {n} clients", fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"{plots.pretty_metric(run.summary.metric_name)} per client")
    fig.suptitle(_title(run), fontsize=10)
    return plots.save(fig, out, "client_spread", fmt_)


def fig_loss_parts(run: Run, out: Path, fmt_: str) -> Path | None:
    """The algorithm's recorded loss parts per round (mean over clients)."""
    r = run.rounds
    cols = [c for c in r.columns if c.startswith("loss_")
            and np.isfinite(r[c].to_numpy(float)).any() and (r[c].abs() > 0).any()]
    if not cols:
        return None
    fig, ax = plots.figure(6.4, 4.0)
    for c in cols:
        ax.plot(r["round"], r[c], marker=".", label=c[5:])
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("mean over local steps and clients")
    ax.set_title(_title(run) + "\nloss parts (weight: the adaptive 1/(CE_t+CE_s))", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, out, "loss_parts", fmt_)


def fig_time(run: Run, out: Path, fmt_: str) -> Path | None:
    r = run.rounds
    if not len(r):
        return None
    fig, ax = plots.figure(7.6, 4.2)
    bottom = np.zeros(len(r))
    colors = plots.plt.get_cmap("tab10").colors
    for i, p in enumerate(PHASES):
        v = r[f"phase_{p}_s"].to_numpy(float)
        ax.bar(r["round"], v, bottom=bottom, label=PHASE_LABELS[p], color=colors[i])
        bottom += v
    if "wall_time_s" in r:
        ax.plot(r["round"], r["wall_time_s"], ls="none", marker="D", ms=5, color="black",
                label="round wall time (rank 0)")
    ax.set_xlabel("round")
    ax.set_ylabel("seconds per round")
    ax.set_title(_title(run) + "\nclient phases: slowest client rank; ranks overlap, so a "
                 "stack can exceed\nthe wall time; round 1 includes start-up", fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(r) >= 3 and bottom[0] > 5 * np.median(bottom[1:]):
        ax.set_ylim(0, 1.5 * bottom[1:].max())
        ax.annotate(f"round 1: {bottom[0]:.1f} s (clipped)",
                    xy=(r["round"].iloc[0], 1.45 * bottom[1:].max()), ha="center", va="top",
                    fontsize=8, bbox={"fc": "white", "alpha": 0.8, "lw": 0})
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return plots.save(fig, out, "time_breakdown", fmt_)


def figures(run: Run, out: Path, fmt_: str = "png") -> list[Path]:
    """Write every figure that applies to this run; returns the paths."""
    if not len(run.rounds):
        return []
    made = [fig_metric_vs_round(run, out, fmt_), fig_metric_vs_mb(run, out, fmt_),
            fig_rank_heatmap(run, out, fmt_), fig_client_spread(run, out, fmt_),
            fig_loss_parts(run, out, fmt_), fig_time(run, out, fmt_)]
    return [p for p in made if p is not None]
