"""The run file's schema, declared once for the writer (h5.py) and the reader
(analysis/reader.py); docs/hdf5.md describes every item.

Groups with one row per completed round along an unlimited first axis: ``rounds/`` (one value
per round), ``clients/`` ([round, client]), ``timing/``, ``memory/``, ``replicas/``
([round, rank]), ``layers/rank_up`` ([round, client, layer]) and ``layers/rank_down``. Fixed:
``layers/names``, ``layers/shape``, ``partition/*``. Root attributes: the resolved config,
provenance (dataset, class_names, versions, devices) and ``status``.

Format 3 adds ``run/``: fixed-size scalar datasets created before the file enters SWMR mode and
overwritten in place (``status``, ``error``, ``heartbeat_unix``), so the writer records its
final status and its heartbeat without ever reopening the file, whatever readers hold it open.
"""

from __future__ import annotations

import numpy as np

FORMAT_VERSION = 3

ROUND_FIELDS = ("round", "energy_threshold", "bytes_up", "bytes_down", "mentor_metric",
                "mentee_metric", "wall_time_s", "codec_time_s", "comm_time_s",
                "server_time_s", "train_time_s")
CLIENT_FIELDS = ("bytes_up", "bytes_down", "mentor_metric", "mentee_metric",
                 "mentor_train_loss", "mentee_train_loss", "num_samples", "train_time_s",
                 "encode_time_s", "participated", "skipped")
TIMING_PHASES = ("train_s", "encode_s", "comm_s", "aggregate_s", "decode_s", "eval_s",
                 "round_s")
#: groups of [round, rank] datasets
RANK_GROUPS = ("timing", "memory", "replicas")
STATUSES = ("running", "completed", "interrupted", "failed")

#: format 3: the run's state, overwritten in place (SWMR-safe); preferred over the root attrs
RUN_GROUP = "run"
RUN_STATUS = "run/status"  # fixed-length ASCII, STATUS_BYTES
RUN_ERROR = "run/error"  # fixed-length UTF-8, ERROR_BYTES ('' unless failed)
RUN_HEARTBEAT = "run/heartbeat_unix"  # float64: the writer's last sign of life (unix time)
#: int64 [2] / S64 [2]: the checkpoint manifest committed (slot 0) and being written (slot 1);
#: round -1 and '' where none (runtime/manifest.py checks a manifest against them)
RUN_CHECKPOINT_ROUND = "run/checkpoint_round"
RUN_CHECKPOINT_SHA256 = "run/checkpoint_sha256"
STATUS_BYTES = 16
ERROR_BYTES = 1024

_INT_FIELDS = {"round", "bytes_up", "bytes_down", "num_samples", "participated"}
_INT8_FIELDS = {"skipped"}  # 1 = the client's update was dropped (runtime.nonfinite=skip)


def dtype_of(name: str) -> type:
    """Storage dtype of a ``rounds/`` or ``clients/`` field."""
    if name in _INT8_FIELDS:
        return np.int8
    return np.int64 if name in _INT_FIELDS else np.float64
