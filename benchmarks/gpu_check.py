"""End-to-end check of the CUDA path on one GPU, every figure in one JSON file.

Steps (each timed, recorded ok / failed / timeout / skipped with its error line; one broken
step does not stop the others; the JSON is rewritten after every step):

* ``env``: torch, CUDA, the GPU, nvidia-smi, MPI; whether CPU and GPU give the same bits for
  the SVD decode ``(u * s) @ vt`` (every rank applies the broadcast update through it);
* ``refuse``: 3 client ranks on 1 GPU with ``runtime.ranks_per_gpu=1``: exit 2, one line;
* ``shared``: the same with ``runtime.ranks_per_gpu=3``: runs; the ``devices`` attribute;
* ``shared_server``: the same with ``runtime.server_device=cuda``;
* ``scratch_cuda``, ``scratch_cuda_again``, ``scratch_cpu``, ``default_cuda``: the jobs;
* ``compare``: CUDA twice (bitwise, scripts/h5_identical.py) and CPU against CUDA;
* ``overhead``, ``overhead_cpu``: benchmarks/overhead.py's package-vs-bare round on the GPU
  (and on the CPU of the same machine).

``--dry-run-cpu`` (or FEDKD_GPU_CHECK_CPU=1) runs the same steps on the CPU with shorter jobs;
``refuse`` then asks for CUDA on a machine without it (also exit 2, one line). Without it and
without a GPU: exit 2 with one line. Run it through benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_check_runs import NOT_BITWISE_CPU_GPU, SAME_CPU_GPU, diff_runs, read_run, summary

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY, SCRATCH, DEFAULT = "tests/tiny.yaml", "configs/scratch.yaml", "configs/default.yaml"
GROUPS = {"placement": ["refuse", "shared", "shared_server"],
          "jobs": ["scratch_cuda", "scratch_cpu", "scratch_cuda_again", "default_cuda"],
          "overheads": ["overhead", "overhead_cpu"]}
ORDER = ["env", "refuse", "shared", "shared_server", "scratch_cuda", "scratch_cpu",
         "scratch_cuda_again", "default_cuda", "overhead", "compare", "overhead_cpu"]
#: per-step time limits (s) on an H100 node; the expected times are a third or less
LIMIT = {"env": 90, "refuse": 90, "shared": 120, "shared_server": 120, "scratch_cuda": 150,
         "scratch_cpu": 180, "scratch_cuda_again": 150, "default_cuda": 180, "overhead": 200,
         "compare": 60, "overhead_cpu": 150}
ENV_PROBE = r"""
import json, os, sys, torch
out = {"python": sys.version.split()[0], "torch": torch.__version__,
       "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
       "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
       "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
       "float32_matmul_precision": torch.get_float32_matmul_precision(),
       "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
       "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
try:
    from mpi4py import MPI
    out["mpi_library"] = MPI.Get_library_version().strip().splitlines()[0]
    out["mpi4py"] = __import__("mpi4py").__version__
except Exception as exc:
    out["mpi_library"] = f"unavailable: {type(exc).__name__}: {exc}"
if out["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    out.update(device_name=p.name, capability=list(torch.cuda.get_device_capability(0)),
               memory_gib=round(p.total_memory / 2**30, 2),
               cudnn=torch.backends.cudnn.version())
    bits = {}
    for rows, cols, k in ((64, 64, 30), (64, 128, 30), (384, 384, 100), (384, 1536, 100)):
        g = torch.Generator().manual_seed(rows * cols + k)
        u, s = torch.randn(rows, k, generator=g), torch.rand(k, generator=g)
        vt = torch.randn(k, cols, generator=g)
        a, b = (u * s) @ vt, ((u.cuda() * s.cuda()) @ vt.cuda()).cpu()
        bits[f"{rows}x{cols} K={k}"] = {"same_bits": bool(torch.equal(a, b)),
                                        "max_abs_diff": float((a - b).abs().max())}
    out["svd_decode_cpu_vs_cuda"] = bits
print(json.dumps(out))
"""
OVERHEAD_PROBE = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("overhead", "benchmarks/overhead.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
cfg, dev, reps, *ov = sys.argv[1:]
print(json.dumps(mod.compute(cfg, ov, int(reps), dev)))
"""


def first_line(text: str) -> str:
    """The most telling line of an error output: the last 'error'-looking one, else the last."""
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    hits = [x for x in lines if "error" in x.lower() or "differ" in x.lower()]
    return (hits or lines or [""])[-1][:500]


class Check:
    """The run: selected steps, the time budget, the JSON record."""

    def __init__(self, out: Path, dry: bool, steps: list[str], budget: float) -> None:
        self.out, self.dry, self.steps = out, dry, steps
        self.deadline = time.monotonic() + budget
        self.t0 = time.monotonic()
        self.mpiexec = os.environ.get("FEDKD_MPIEXEC") or (
            str(Path(PY).parent / "mpiexec") if (Path(PY).parent / "mpiexec").exists()
            else shutil.which("mpiexec") or "mpiexec")
        self.tmp = Path(os.environ.get("FEDKD_GPU_CHECK_TMP", "/tmp")) / f"gpu_check_{os.getpid()}"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.server_cuda = False  # set when clients on CUDA and the server on CPU disagree
        import torch

        self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.rec: dict[str, Any] = {
            "schema": 1, "mode": "dry-run-cpu" if dry else "gpu", "host": platform.node(),
            "cpus": os.cpu_count(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()),
            "budget_s": budget, "python": PY, "mpiexec": self.mpiexec,
            "bundle": os.environ.get("FEDKD_GPU_BUNDLE"),  # set: fp16-rounded MiniLM
            "expect": {"same_cpu_vs_cuda": SAME_CPU_GPU, "not_bitwise_cpu_vs_cuda":
                       NOT_BITWISE_CPU_GPU, "cuda_twice": "IDENTICAL (scripts/h5_identical.py)"},
            "steps": {}, "findings": []}

    # -- plumbing ---------------------------------------------------------------------------
    def dev(self, device: str) -> str:
        return "cpu" if self.dry else device

    def save(self) -> None:
        self.rec["total_s"] = round(time.monotonic() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rec, indent=1, default=str))
        tmp.replace(self.out)

    def finding(self, text: str) -> None:
        if text not in self.rec["findings"]:
            self.rec["findings"].append(text)

    def step(self, name: str, fn: Callable[[float], dict[str, Any]]) -> None:
        if name not in self.steps:
            return
        left = self.deadline - time.monotonic()
        rec: dict[str, Any]
        if left < 20:
            rec = {"status": "skipped", "ok": None, "error": f"time budget spent ({left:.0f} s "
                   "left)", "seconds": 0.0}
        else:
            t = time.monotonic()
            print(f"[gpu_check] {name} (limit {min(LIMIT[name], left):.0f} s)", flush=True)
            try:
                rec = {"status": "ok", "ok": True, "error": ""}
                rec.update(fn(min(LIMIT[name], left)))
                if rec.get("timed_out"):
                    rec.update(status="timeout", ok=False)
                elif not rec["ok"]:
                    rec["status"] = "failed"
            except Exception as exc:  # one broken step must not lose the others
                rec = {"status": "failed", "ok": False,
                       "error": f"{type(exc).__name__}: {first_line(str(exc))}"}
            rec["seconds"] = round(time.monotonic() - t, 1)
        self.rec["steps"][name] = rec
        self.save()

    def sh(self, cmd: list[str], limit: float, env: dict[str, str] | None = None) -> dict:
        """Run ``cmd`` under ``timeout`` (the whole process group); rc, wall, output tails."""
        full = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1", "MPIEXEC_TIMEOUT": str(int(limit) + 5),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                            os.environ.get("PYTHONPATH")])),
                **(env or {})}
        wrapped = (["timeout", "-k", "10", str(int(limit))] if shutil.which("timeout") else [])
        t = time.perf_counter()
        try:
            res = subprocess.run(wrapped + cmd, cwd=ROOT, env=full, capture_output=True,
                                 text=True, timeout=limit + 20)
            rc, out, err = res.returncode, res.stdout, res.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out, err = 124, str(exc.stdout or ""), str(exc.stderr or "")
        return {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(time.perf_counter() - t, 2),
                "timed_out": rc in (124, 137), "stdout": out, "stderr": err}

    def job(self, name: str, config: str, overrides: list[str], limit: float,
            env: dict[str, str] | None = None) -> dict[str, Any]:
        """``mpiexec -n 4 python -m fedkd_mpi run CONFIG``; the run file's figures."""
        h5 = self.tmp / f"{name}.h5"
        r = self.sh([self.mpiexec, "-n", "4", PY, "-m", "fedkd_mpi", "run", config,
                     f"output={h5}", "runtime.progress=false", "--overwrite", *overrides],
                    limit, env)
        err = r.pop("stderr")
        r.pop("stdout")
        lines = [x for x in err.splitlines() if x.strip()]
        r["stderr_tail"], r["stderr_lines"] = lines[-(6 if r["rc"] in (0, 2) else 40):], len(lines)
        r["run_file"] = str(h5)
        if h5.exists():
            try:
                r["run"] = read_run(h5)
            except Exception as exc:  # an unreadable file: keep the exit code and output
                r["run_read_error"] = f"{type(exc).__name__}: {exc}"
        status = r.get("run", {}).get("status")
        r["ok"] = r["rc"] == 0 and status == "completed"
        if not r["ok"]:
            r["error"] = r.get("run", {}).get("error") or first_line(err) or f"exit {r['rc']}"
        return r

    def cuda_job(self, name: str, config: str, overrides: list[str], limit: float,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
        extra = ["runtime.server_device=cuda"] if self.server_cuda and not self.dry else []
        r = self.job(name, config, [f"runtime.device={self.dev('cuda')}",
                                    "runtime.ranks_per_gpu=3", *extra, *overrides], limit, env)
        r["server_device"] = "cuda" if extra else "cpu"
        return r

    # -- the steps --------------------------------------------------------------------------
    def env(self, limit: float) -> dict[str, Any]:
        r = self.sh([PY, "-c", ENV_PROBE], limit)
        out: dict[str, Any] = {"ok": r["rc"] == 0, "wall_s": r["wall_s"]}
        if r["rc"] == 0:
            out.update(json.loads(r["stdout"].strip().splitlines()[-1]))
        else:
            out["error"] = first_line(r["stderr"])
        smi = shutil.which("nvidia-smi")
        out["nvidia_smi_L"] = (subprocess.run([smi, "-L"], capture_output=True, text=True,
                                              timeout=30).stdout.strip() if smi else None)
        v = self.sh([self.mpiexec, "--version"], 30)
        out["mpiexec_version"] = (v["stdout"] + v["stderr"]).strip().splitlines()[:2]
        src = "\n".join(p.read_text(errors="replace") for p in (ROOT / "fedkd_mpi").rglob("*.py"))
        out["package_sets"] = {k: k in src for k in ("use_deterministic_algorithms",
                                                     "CUBLAS_WORKSPACE_CONFIG",
                                                     "cudnn.deterministic", "allow_tf32")}
        if not any(out["package_sets"].values()):
            self.finding("fedkd_mpi sets neither torch.use_deterministic_algorithms nor "
                         "CUBLAS_WORKSPACE_CONFIG nor TF32 flags: GPU runs rely on torch's "
                         "defaults (TF32 off for matmul) and on cuBLAS being run-to-run "
                         "deterministic on one stream")
        bits = out.get("svd_decode_cpu_vs_cuda", {})
        if any(not b["same_bits"] for b in bits.values()):
            self.finding("the SVD decode (u*s)@vt gives other bits on CUDA than on the CPU; "
                         "codecs/svd.py decodes on each rank's device, so a CPU server and "
                         "CUDA clients build different shared-model replicas (the server's "
                         "checksum check fails the run)")
        return out

    def refuse(self, limit: float) -> dict[str, Any]:
        r = self.job("refuse", TINY, ["runtime.device=cuda", "runtime.ranks_per_gpu=1",
                                      "train.rounds=1"], limit)
        n, lines = r["stderr_lines"], r["stderr_tail"]
        r["line"] = lines[-1] if lines else ""
        if self.gpus >= 3:  # devices.py: 3 client ranks fit 3 GPUs at one rank per GPU
            r["expect"] = "runs, one client rank per GPU"
            return r
        key = "runtime.ranks_per_gpu" if self.gpus else "CUDA is not available"
        r["expect"] = f"exit 2 with one line naming {key!r} (devices.py, {self.gpus} GPU)"
        r["ok"] = r["rc"] == 2 and n == 1 and key in lines[0]
        r["error"] = "" if r["ok"] else f"exit {r['rc']}, {n} line(s): {r['line']}"
        return r

    def placed(self, r: dict[str, Any], server: str) -> dict[str, Any]:
        """Check the run file's ``devices`` against devices.py's rule (client i: GPU i mod n)."""
        devs = [d.rsplit(": ", 1)[-1] for d in r.get("run", {}).get("devices", [])]
        want = [server] + ["cpu" if self.dry else f"cuda:{i % max(self.gpus, 1)}"
                           for i in range(3)]
        r.update(devices=devs, devices_expected=want, placement_ok=devs == want)
        if r["ok"] and devs != want:
            r.update(ok=False, error=f"devices {devs}, expected {want}")
        return r

    def shared(self, limit: float) -> dict[str, Any]:
        r = self.cuda_job("shared", TINY, ["train.rounds=1"] if self.dry else [], limit)
        self.placed(r, "cpu")
        if not r["ok"] and "differ from rank 0" in r.get("error", ""):
            self.server_cuda = True
            self.finding("runtime.device=cuda with the server on the CPU (the default "
                         "runtime.server_device) fails: " + r["error"] + "; the jobs below "
                         "ran with runtime.server_device=cuda")
        return r

    def shared_server(self, limit: float) -> dict[str, Any]:
        ov = [f"runtime.server_device={self.dev('cuda')}"] + (["train.rounds=1"] if self.dry
                                                              else [])
        r = self.job("shared_server", TINY, [f"runtime.device={self.dev('cuda')}",
                                             "runtime.ranks_per_gpu=3", *ov], limit)
        return self.placed(r, "cpu" if self.dry else "cuda:0")

    def scratch(self, device: str, name: str) -> Callable[[float], dict[str, Any]]:
        ov = ["train.rounds=2"] + (["train.local_steps=6"] if self.dry else [])
        if device == "cuda":
            return lambda limit: self.cuda_job(name, SCRATCH, ov, limit)
        return lambda limit: self.job(name, SCRATCH, ["runtime.device=cpu", *ov], limit)

    def default(self, limit: float) -> dict[str, Any]:
        ov = ["train.rounds=1"] + (["train.local_steps=3", "data.test_samples=64"]
                                   if self.dry else [])
        return self.cuda_job("default_cuda", DEFAULT, ov, limit)

    def compare(self, limit: float) -> dict[str, Any]:
        runs = {k: self.rec["steps"].get(k, {}).get("run_file")
                for k in ("scratch_cuda", "scratch_cuda_again", "scratch_cpu")}
        out: dict[str, Any] = {}
        pairs = {"cuda_twice": ("scratch_cuda", "scratch_cuda_again"),
                 "cpu_vs_cuda": ("scratch_cpu", "scratch_cuda")}
        for key, (a, b) in pairs.items():
            if not (runs[a] and runs[b] and Path(runs[a]).exists() and Path(runs[b]).exists()):
                out[key] = {"error": f"missing run file of {a} or {b}"}
                continue
            h = self.sh([PY, "scripts/h5_identical.py", runs[a], runs[b]], limit / 2)
            out[key] = {"h5_identical_rc": h["rc"],
                        "h5_identical": h["stdout"].strip().splitlines()[:40],
                        **diff_runs(Path(runs[a]), Path(runs[b]))}
        twice = out["cuda_twice"].get("h5_identical_rc") == 0
        same = out["cpu_vs_cuda"].get("same_expected", {})
        out["ok"] = twice and bool(same) and all(same.values())
        if "h5_identical_rc" in out["cuda_twice"] and not twice:
            self.finding("two identical CUDA runs gave different run files (see compare."
                         "cuda_twice); try CUBLAS_WORKSPACE_CONFIG=:4096:8 and "
                         "torch.use_deterministic_algorithms(True), which the package does "
                         "not set")
        errs = [f"{k}: {out[k]['error']}" for k in pairs if out[k].get("error")]
        if "error" not in out["cuda_twice"] and not twice:
            errs.append("cuda_twice: not identical")
        if same and not all(same.values()):
            errs.append("cpu_vs_cuda: " + ", ".join(k for k, v in same.items() if not v))
        out["error"] = "; ".join(errs)
        return out

    def overhead(self, device: str) -> Callable[[float], dict[str, Any]]:
        def run(limit: float) -> dict[str, Any]:
            configs = [SCRATCH] if device == "cpu" else [SCRATCH, DEFAULT]
            reps = 1 if self.dry or device == "cpu" else 3
            out: dict[str, Any] = {"ok": True, "reps": reps}
            for config in configs:
                ov = (["train.local_steps=4"] + (["data.test_samples=64"] if config == DEFAULT
                                                 else [])) if self.dry else []
                left = self.deadline - time.monotonic()
                r = self.sh([PY, "-c", OVERHEAD_PROBE, config, self.dev(device), str(reps),
                             *ov], min(limit / len(configs), left))
                key = Path(config).stem
                if r["rc"] == 0:
                    res = json.loads(r["stdout"].strip().splitlines()[-1])
                    res["ratio_train"] = res["train_pkg"] / res["train_bare"]
                    res["ratio_train_eval"] = ((res["train_pkg"] + res["eval_pkg"])
                                               / (res["train_bare"] + res["eval_bare"]))
                    out[key] = res
                    out["ok"] &= bool(res["identical"])
                else:
                    out[key] = {"rc": r["rc"], "error": first_line(r["stderr"])}
                    out["ok"] = False
                    out["timed_out"] = r["timed_out"]
            if not out["ok"]:
                out["error"] = "; ".join(f"{k}: {v.get('error') or 'weights not identical'}"
                                         for k, v in out.items() if isinstance(v, dict)
                                         and (v.get("error") or not v.get("identical", True)))
            return out
        return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=os.path.join(os.environ.get("OUT", "."),
                                                           "gpu_check.json"))
    ap.add_argument("--dry-run-cpu", action="store_true",
                    default=os.environ.get("FEDKD_GPU_CHECK_CPU") == "1")
    ap.add_argument("--steps", default="all", help="comma list of steps or groups "
                    f"({', '.join(ORDER)}; {', '.join(GROUPS)})")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all steps")
    a = ap.parse_args(argv)
    wanted = ORDER if a.steps == "all" else [s for w in a.steps.split(",")
                                             for s in GROUPS.get(w, [w])]
    bad = [s for s in wanted if s not in ORDER]
    if bad:
        ap.error(f"unknown step(s) {bad}")
    if not a.dry_run_cpu:
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} "
                  "(torch.cuda.is_available() is False); --dry-run-cpu checks the script on "
                  "the CPU", file=sys.stderr)
            return 2
    c = Check(Path(a.out), a.dry_run_cpu, [s for s in ORDER if s in wanted], a.budget)
    c.step("env", c.env)
    c.step("refuse", c.refuse)
    c.step("shared", c.shared)
    c.step("shared_server", c.shared_server)
    c.step("scratch_cuda", c.scratch("cuda", "scratch_cuda"))
    c.step("scratch_cpu", c.scratch("cpu", "scratch_cpu"))
    c.step("scratch_cuda_again", c.scratch("cuda", "scratch_cuda_again"))
    c.step("default_cuda", c.default)
    c.step("overhead", c.overhead("cuda"))
    c.step("compare", c.compare)
    c.step("overhead_cpu", c.overhead("cpu"))
    c.save()
    print(summary(c.rec))
    print(f"[gpu_check] wrote {c.out}")
    return 0 if all(s["ok"] for s in c.rec["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
