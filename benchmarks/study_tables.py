"""Tables and figures of a study (benchmarks/study.py), from its run files only.

Per variant: every row's last-round metric per model (mean over clients, then mean ± std over
seeds; worst client, 10th percentile and pooled accuracy, validation mean, MB per client);
paired differences (row minus base row, per seed, same clients, then mean over seeds with a
95 % t-interval over seeds, and over all client-seed pairs); learning curves against rounds and
cumulative MB; and FedKD's loss parts over training (the mechanism).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from study import Study, completed, h5
from tabulate import tabulate

from fedkd_mpi.analysis.reader import Run, load
from fedkd_mpi.analysis.spread import last_values, spread, t_interval


def _f(x: float, d: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{d}f}"


def _pm(xs: list[float]) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return "–"
    sd = f" ± {np.std(xs, ddof=1):.4f}" if len(xs) > 1 else ""
    return f"{np.mean(xs):.4f}{sd}"


def _runs(s: Study, variant: str) -> dict[str, dict[int, Run]]:
    out: dict[str, dict[int, Run]] = {}
    for row in s.variant_rows[variant]:
        for p in completed(s, variant, row):
            out.setdefault(row, {})[int(p.stem.rsplit("-s", 1)[1])] = load(p)
    return out


def main_table(s: Study, runs: dict[str, dict[int, Run]]) -> str:
    rows = []
    for name, row in s.rows.items():
        for m in row.models:
            by_seed = runs.get(name, {})
            sp = [spread(r, m) for r in by_seed.values()]
            sp = [x for x in sp if x is not None]
            if not sp:
                continue
            val = [spread(r, m, "val") for r in by_seed.values()]
            mb = [r.summary.mb_per_client for r in by_seed.values()]
            rows.append([name, m, f"{len(sp)}", _pm([x.mean for x in sp]),
                         _pm([x.worst for x in sp]), _pm([x.p10 for x in sp]),
                         _pm([x.pooled for x in sp]),
                         _pm([v.mean for v in val if v is not None]), _f(float(np.mean(mb)), 3),
                         f"{sp[0].round}"])
    head = ["row", "model", "seeds", "test, mean over clients", "worst client", "p10",
            "pooled", "validation", "MB/client", "round"]
    return tabulate(rows, head, tablefmt="github", disable_numparse=True)


def paired_table(s: Study, runs: dict[str, dict[int, Run]]) -> str:
    rows = []
    for a, ma, b, mb in s.pairs:
        seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
        if not seeds:
            continue
        per_seed, per_client, wins, n = [], [], 0, 0
        for sd in seeds:
            _, va = last_values(runs[a][sd], ma, s.split)
            _, vb = last_values(runs[b][sd], mb, s.split)
            common = va.index.intersection(vb.index)
            d = va[common].to_numpy() - vb[common].to_numpy()
            per_seed.append(float(d.mean()))
            per_client += d.tolist()
            wins += int((d > 0).sum())
            n += len(d)
        lo, hi = t_interval(np.array(per_seed))
        clo, chi = t_interval(np.array(per_client))
        rows.append([f"{a} {ma} − {b} {mb}", f"{len(seeds)}",
                     ", ".join(f"{x:+.4f}" for x in per_seed), f"{np.mean(per_seed):+.4f}",
                     f"[{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else "–",
                     f"[{clo:+.4f}, {chi:+.4f}]" if math.isfinite(clo) else "–",
                     f"{wins}/{n}"])
    head = [f"paired difference ({s.split}, last round)", "seeds", "per seed", "mean",
            "95 % CI over seeds", "95 % CI over client-seed pairs", "clients better"]
    return tabulate(rows, head, tablefmt="github", disable_numparse=True)


def mechanism_table(s: Study, runs: dict[str, dict[int, Run]], row: str,
                    local: str | None) -> str:
    """FedKD's loss parts over training (mean over clients and seeds), the mentor's KD term
    against its CE, and how many clients' shared mentee beats their local-only mentor."""
    by_seed = runs.get(row, {})
    if not by_seed:
        return ""
    r0 = next(iter(by_seed.values())).rounds
    if "loss_ce_t" not in r0:
        return ""
    rounds = r0["round"].to_numpy()
    evaluated = np.flatnonzero(np.isfinite(r0["mentor_metric"].to_numpy(float)))
    picks = sorted({int(evaluated[i]) for i in np.linspace(0, len(evaluated) - 1,
                                                           min(6, len(evaluated))).round()
                    .astype(int)}) if len(evaluated) else []
    out = []
    for i in picks:
        def mean(col: str, i: int = i) -> float:
            return float(np.mean([r.rounds[col].iloc[i] for r in by_seed.values()]))

        w = mean("loss_weight")
        beat = "–"
        if local and local in runs:
            wins = tot = 0
            for sd, r in by_seed.items():
                if sd not in runs[local]:
                    continue
                c, lc = r.clients, runs[local][sd].clients
                rnd = int(rounds[i])
                me = c[c["round"] == rnd].set_index("client")["mentee_metric"]
                lo = lc[lc["round"] == rnd].set_index("client")["mentor_metric"]
                ok = me.notna() & lo.notna()
                wins += int((me[ok] > lo[ok]).sum())
                tot += int(ok.sum())
            beat = f"{wins}/{tot}" if tot else "–"
        out.append([int(rounds[i]), _f(mean("loss_ce_t")), _f(w * mean("loss_kl_t")),
                    _f(w * mean("loss_kl_t") / mean("loss_ce_t"), 3), _f(mean("loss_ce_s")),
                    _f(w * mean("loss_kl_s")), _f(w * mean("loss_hidden")), _f(w, 3),
                    _f(mean("mentor_metric")), _f(mean("mentee_metric")), beat])
    head = ["round", "mentor CE", "mentor KD term (w̄·KL̄)", "KD/CE", "mentee CE",
            "mentee KD term (w̄·KL̄)", "mentee hidden term (w̄·MSĒ)", "w", "mentor", "mentee",
            "mentee > local mentor"]
    return tabulate(out, head, tablefmt="github", disable_numparse=True)


def curves(s: Study, variant: str, runs: dict[str, dict[int, Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    colors = iter(plt.get_cmap("tab10").colors * 3)
    for name, row in s.rows.items():
        for m in row.models:
            color = next(colors)  # the same line colour in both panels
            rs = list(runs.get(name, {}).values())
            col = f"{m}_metric"
            if not rs or col not in rs[0].rounds:
                continue
            n = min(len(r.rounds) for r in rs)
            y = np.mean([r.rounds[col].to_numpy(float)[:n] for r in rs], axis=0)
            x = rs[0].rounds["round"].to_numpy()[:n]
            mb = np.mean([r.rounds["cum_mb_per_client"].to_numpy(float)[:n] for r in rs], 0)
            ok = np.isfinite(y)
            ls = "-" if m == "mentor" else "--"
            axes[0].plot(x[ok], y[ok], ls, marker=".", color=color, label=f"{name} {m}")
            if mb[ok].max(initial=0) > 0:
                axes[1].plot(mb[ok], y[ok], ls, marker=".", color=color, label=f"{name} {m}")
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("cumulative MB per client (up + down)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("test metric, mean over clients and seeds")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{s.name} / {variant}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def diff_curves(s: Study, variant: str, runs: dict[str, dict[int, Run]], path: Path) -> bool:
    """Each pair's paired difference (mean over clients, then over seeds, ± the 95 % t-interval
    over seeds) at every evaluated round, against the round and the pair's cumulative MB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    drawn = False
    for a, ma, b, mb in s.pairs:
        seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
        if not seeds:
            continue
        per_seed = []
        for sd in seeds:
            pre = "" if s.split == "test" else f"{s.split}_"
            ca = runs[a][sd].clients.pivot(index="round", columns="client",
                                           values=f"{pre}{ma}_metric")
            cb = runs[b][sd].clients.pivot(index="round", columns="client",
                                           values=f"{pre}{mb}_metric")
            per_seed.append((ca - cb).mean(axis=1))
        d = np.array([p.to_numpy() for p in per_seed])
        rounds = per_seed[0].index.to_numpy()
        ok = np.isfinite(d).all(axis=0)
        if not ok.any():
            continue
        mean = d[:, ok].mean(axis=0)
        ci = np.array([t_interval(d[:, i]) for i in np.flatnonzero(ok)])
        mb_a = np.mean([runs[a][sd].rounds.set_index("round")["cum_mb_per_client"]
                        .reindex(rounds).to_numpy() for sd in seeds], axis=0)[ok]
        label = f"{a} {ma} − {b} {mb}"
        for ax, x in ((axes[0], rounds[ok]), (axes[1], np.maximum(mb_a, 1e-3))):
            (line,) = ax.plot(x, mean, marker=".", label=label)
            if len(seeds) > 1:
                ax.fill_between(x, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.15)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for ax in axes:
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel(f"paired difference ({s.split}, mean over clients)")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("cumulative MB per client of the first run (0 shown as 1e-3)")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{s.name} / {variant}: mean over seeds, shaded: 95 % t-interval over seeds",
                 fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def build(s: Study) -> str:
    out = [f"# study {s.name}", s.text.strip()]
    chosen = s.out / "chosen.yaml"
    if chosen.is_file():
        out += ["", "Chosen on the validation split (seed and variant of the tune stage):",
                "```yaml", chosen.read_text().strip(), "```"]
    fedkd_row = next((r for r in s.rows if r == "fedkd"), None)
    local_row = next((r for r in s.rows if r.startswith("local")), None)
    # unpaired rows (centralized: one IID client) are shown beside every variant
    unpaired: dict[str, dict[int, Run]] = {}
    for v in s.variants:
        for r, by_seed in _runs(s, v).items():
            if not s.rows[r].paired:
                unpaired.setdefault(r, by_seed)
    for variant in s.variants:
        if all(not s.rows[r].paired for r in s.variant_rows[variant]):
            continue  # only unpaired rows: shown with the others
        runs = {**_runs(s, variant), **unpaired}
        if not runs:
            continue
        fig = s.out / f"curves_{variant}.png"
        curves(s, variant, runs, fig)
        out += ["", f"## {variant}", "", main_table(s, runs), "", paired_table(s, runs)]
        if fedkd_row:
            mech = mechanism_table(s, runs, fedkd_row, local_row)
            if mech:
                out += ["", f"FedKD's loss parts ({fedkd_row}; mean over clients and seeds):",
                        "", mech]
        out += ["", f"figure: {fig}"]
        dfig = s.out / f"paired_{variant}.png"
        if diff_curves(s, variant, runs, dfig):
            out += [f"figure: {dfig}"]
    missing = [str(h5(s, v, r, sd)) for v in s.variants for r in s.variant_rows[v]
               for sd in s.seeds if h5(s, v, r, sd) not in completed(s, v, r)]
    if missing:
        out += ["", f"({len(missing)} run file(s) not completed yet)"]
    return "\n".join(out)
