"""The run files of benchmarks/gpu_check.py: what it reads from them, how two are compared,
the printed summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the runs compared bit for bit in ``compare``: what must match CPU vs CUDA
SAME_CPU_GPU = ["partition/num_train", "partition/label_hist", "clients/num_samples",
                "rounds/round", "rounds/energy_threshold", "layers/names", "layers/shape"]
NOT_BITWISE_CPU_GPU = ["rounds/*metric*, losses (other kernels, CUDA dropout masks)",
                       "layers/rank_up, rank_down, bytes_up/down (ranks follow the update's "
                       "singular values)", "replicas/checksum"]


def read_run(path: Path) -> dict[str, Any]:
    """Status, devices, versions and every per-round series of a run file."""
    import h5py
    import numpy as np

    def py(v: Any) -> Any:
        v = v.decode() if isinstance(v, bytes) else v
        return v.tolist() if isinstance(v, np.ndarray | np.generic) else v

    with h5py.File(path, "r") as f:
        st = f["run/status"][()] if "run/status" in f else f.attrs.get("status")
        err = f["run/error"][()] if "run/error" in f else f.attrs.get("error", "")
        out = {"status": str(py(st)).strip("\x00 "), "error": str(py(err) or "").strip("\x00 "),
               "devices": [str(py(d)) for d in f.attrs.get("devices", [])],
               "torch_version": py(f.attrs.get("torch_version")),
               "mpi_library": str(py(f.attrs.get("mpi_library", ""))).splitlines()[:1]}
        out["rounds"] = {k: py(f["rounds"][k][()]) for k in f.get("rounds", {})}
        for k in ("rank_down", "rank_up"):
            if f"layers/{k}" in f:
                out[k] = py(f[f"layers/{k}"][()])
        if "timing/round_s" in f:
            out["round_s_max_per_round"] = py(f["timing/round_s"][()].max(axis=1))
    return out


def diff_runs(a: Path, b: Path) -> dict[str, Any]:
    """Which of SAME_CPU_GPU match bit for bit, and the max |a - b| of every rounds/ series."""
    import h5py
    import numpy as np

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        same = {}
        for k in SAME_CPU_GPU:
            if k in fa and k in fb:
                x, y = np.asarray(fa[k][()]), np.asarray(fb[k][()])
                same[k] = x.shape == y.shape and (x.tolist() == y.tolist() if x.dtype.kind in
                                                  "OSU" else x.tobytes() == y.tobytes())
        diffs, equal = {}, {}
        for k in sorted(set(fa.get("rounds", {})) & set(fb.get("rounds", {}))):
            x = np.asarray(fa["rounds"][k][()], np.float64)
            y = np.asarray(fb["rounds"][k][()], np.float64)
            if x.shape == y.shape and not k.endswith("_time_s"):
                d = np.abs(x - y)
                diffs[k] = float(np.nanmax(d)) if np.isfinite(d).any() else 0.0
        for k in ("layers/rank_up", "layers/rank_down", "rounds/bytes_up", "rounds/bytes_down"):
            if k in fa and k in fb:
                equal[k] = bool(np.array_equal(fa[k][()], fb[k][()]))
    metric = {k: v for k, v in diffs.items() if "metric" in k or k.startswith(("mentor_",
                                                                              "mentee_"))}
    return {"same_expected": same, "equal_not_required": equal, "max_abs_diff": diffs,
            "max_abs_metric_diff": max(metric.values(), default=None)}


def summary(rec: dict[str, Any]) -> str:
    rows = [f"gpu_check ({rec['mode']}, {rec['host']}): {rec['total_s']} s of "
            f"{rec['budget_s']:.0f} s budget"]
    for name, s in rec["steps"].items():
        bits = []
        if "wall_s" in s and "run" in s:
            run = s["run"]
            m = [round(x, 4) for x in run["rounds"].get("mentee_metric", [])]
            bits.append(f"status {run['status']}, mentee {m}, devices "
                        + ", ".join(d.split(": ")[-1] for d in run.get("devices", [])))
        if name == "compare":
            for k in ("cuda_twice", "cpu_vs_cuda"):
                v = s.get(k, {})
                bits.append(f"{k}: rc {v.get('h5_identical_rc')}, max metric diff "
                            f"{v.get('max_abs_metric_diff')}")
        if name.startswith("overhead"):
            bits += [f"{k} x{v['ratio_train_eval']:.2f} (train {v['train_pkg']:.3f} s vs "
                     f"{v['train_bare']:.3f} s, same bits {v['identical']})"
                     for k, v in s.items() if isinstance(v, dict) and "ratio_train_eval" in v]
        if name == "env" and s.get("ok"):
            bits.append(f"torch {s.get('torch')}, cuda {s.get('cuda_available')}, "
                        f"{s.get('device_name', 'no GPU')}")
        err = f"  ERROR {s['error']}" if s.get("error") else ""
        rows.append(f"  {name:20s} {s['status']:8s} {s['seconds']:6.1f} s  "
                    + "; ".join(bits) + err)
    rows += [f"  finding: {f}" for f in rec["findings"]]
    return "\n".join(rows)
