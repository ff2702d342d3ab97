"""The run configuration's schema: one pydantic model per section, strict (unknown keys,
booleans for numbers and non-finite floats are refused), and :class:`ConfigError`, the one-line
error every config problem becomes."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration problem, already phrased as one line for the user."""


class _Strict(BaseModel):
    """Unknown keys, NaN/Inf and booleans given for numbers are errors (``rounds: true`` would
    otherwise read as 1, ``lr_mentor: .nan`` fail a bound with a misleading message)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _numeric(field.annotation):
                raise ValueError("Input should be a number, not a boolean")
        return value


def _numeric(annotation: Any) -> bool:
    """``int``/``float`` (or an Optional of them), not ``bool``."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return bool(args) and bool not in args and any(a in (int, float) for a in args)


class TransformerSpec(_Strict):
    """Shape of a small transformer encoder (mentor or mentee)."""

    layers: int = Field(2, ge=1, le=48, description="number of encoder layers")
    hidden: int = Field(64, ge=8, le=4096, description="model width")
    heads: int = Field(4, ge=1, le=64, description="attention heads")
    ffn: int = Field(128, ge=8, le=16384, description="feed-forward width")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TransformerSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class DataConfig(_Strict):
    name: str = Field("rotten_tomatoes", description="a registered dataset (fedkd-mpi plugins "
                      "lists them) or module:attribute")
    num_clients: int = Field(3, ge=1, le=100_000)
    partition: str = Field("iid", description="iid | natural | dirichlet | shards, another "
                           "registered partitioner, or module:attribute")
    dirichlet_alpha: float = Field(0.5, gt=0.0, le=1e6, description="label skew (dirichlet)")
    shards_per_client: int = Field(2, ge=1, le=10_000, description="label shards (shards)")
    natural_key: str | None = Field(None, description="natural: grouping key; None = default")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="validation share of each "
                                "client's data, taken from its training part and scored like "
                                "the test data (val_* columns): choose settings on it; 0 = none")
    max_len: int = Field(48, ge=4, le=4096, description="tokens per example")
    vocab_size: int = Field(8192, ge=64, le=1_000_000, description="hash buckets")
    max_samples: int | None = Field(None, ge=10, description="subsample the corpus (tests); "
                                    "global test protocol: subsample the training pool")
    tokenizer: str = Field("auto", description="auto | hash | a pretrained name or folder "
                           "(its tokenizer.json); auto: model.pretrained for kind hf, else hash")
    metric: Literal["accuracy", "f1", "macro_f1"] = Field(
        "accuracy", description="headline metric (f1: of the positive class, binary tasks)")
    test_protocol: Literal["per_client", "global"] = Field(
        "per_client", description="per_client: test_fraction of each client's share; global: "
        "one held-out set (the official test split if any) evaluated by every client")
    test_samples: int | None = Field(None, ge=1, description="global: cap on held-out examples")
    # data files (data.name: table | hf_disk; docs/data.md)
    path: str | None = Field(None, description="table: a CSV/TSV/JSONL/Parquet file (.gz/.bz2 "
                             "too); hf_disk: a folder written by datasets.save_to_disk. "
                             "Relative: in a config file, against that file's folder; as a "
                             "command-line override, against the working directory")
    test_path: str | None = Field(None, description="table: an official test split file, same "
                                  "columns; needs test_protocol global. Relative: as path")
    text_column: str | None = Field(None, description="column of the texts (token inputs)")
    feature_columns: list[str] | None = Field(None, description="numeric feature columns "
                                              "(feature-vector inputs)")
    label_column: str | None = Field(None, description="column of the labels (strings or ints)")
    group_column: str | None = Field(None, description="key of the natural partition (a user, "
                                     "a source, a document)")

    @model_validator(mode="after")
    def _files(self) -> DataConfig:
        """The file datasets' keys (table, hf_disk) fit together; test_path needs global."""
        if self.test_path is not None and self.test_protocol != "global":
            raise ValueError("data.test_path (an official test split) needs "
                             "data.test_protocol global")
        if self.name not in ("table", "hf_disk"):
            return self
        if not self.path:
            what = ("a CSV/TSV/JSONL/Parquet file" if self.name == "table"
                    else "a folder written by datasets.save_to_disk")
            raise ValueError(f"data.name {self.name} needs data.path ({what})")
        if not self.label_column:
            raise ValueError(f"data.name {self.name} needs data.label_column (the column of "
                             "the labels)")
        if bool(self.text_column) == bool(self.feature_columns):
            which = "both" if self.text_column else "neither"
            raise ValueError(f"data.name {self.name} needs exactly one of data.text_column "
                             f"(texts) and data.feature_columns (numbers); {which} given")
        if self.name == "hf_disk" and self.test_path is not None:
            raise ValueError("data.test_path is for data.name table; hf_disk reads the "
                             "folder's 'test' split")
        return self


class ModelConfig(_Strict):
    mentor: TransformerSpec = TransformerSpec(layers=4, hidden=128, heads=4, ffn=256)
    mentee: TransformerSpec = TransformerSpec(layers=2, hidden=64, heads=4, ffn=128)
    freeze_embeddings: bool = Field(True, description="shared model: frozen, never sent")
    freeze_private_embeddings: bool = Field(True, description="private model (never sent)")
    kind: str = Field(
        "tiny", description="model family: tiny (small encoder from scratch), hf (pretrained "
        "encoder model.pretrained, mentor/mentee = its first mentor.layers/mentee.layers "
        "layers), cnn (small CNN, image tasks), another registered family or module:attribute")
    pretrained: str = Field("all-MiniLM-L6-v2", description="kind hf: packaged name or a local "
                            "folder with a Hugging Face config.json and weights")

    @model_validator(mode="after")
    def _mentee_not_deeper(self) -> ModelConfig:
        if self.mentee.layers > self.mentor.layers:
            raise ValueError(
                f"mentee.layers ({self.mentee.layers}) must be <= mentor.layers "
                f"({self.mentor.layers})"
            )
        return self


class TrainConfig(_Strict):
    rounds: int = Field(5, ge=1, le=100_000)
    local_epochs: int = Field(1, ge=1, le=10_000)
    local_steps: int | None = Field(None, ge=1, description="steps per round; overrides epochs")
    batch_size: int = Field(32, ge=1, le=65_536)
    eval_batch_size: int = Field(256, ge=1, le=65_536)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_mentor: float = Field(1e-3, gt=0.0, le=10.0)
    lr_mentee: float = Field(1e-3, gt=0.0, le=10.0)
    aggregation: str = Field("uniform", description="uniform | weighted (by training examples) "
                             "| median | trimmed_mean, another registered aggregator or "
                             "module:attribute")
    trim_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="trimmed_mean: share of "
                                 "clients dropped at each end, per coordinate")
    eval_every: int = Field(1, ge=1, description="held-out evaluation every N rounds and after "
                            "the last (other rounds: NaN metrics)")
    sample_fraction: float = Field(1.0, gt=0.0, le=1.0, description="clients sampled per round")
    sample_count: int | None = Field(None, ge=1, description="clients per round; overrides "
                                     "sample_fraction")


class FedKDConfig(_Strict):
    codec: str = Field("svd", description="codec of the mentee update: svd | powersgd | fedpaq "
                       "| topk | dense, another registered codec or module:attribute")
    loss_mode: Literal["paper", "reference"] = "paper"
    kd_loss: bool = True
    hidden_loss: bool = True
    attention_loss: bool = True
    adaptive_weight: bool = True
    mentor_distill: bool = True
    mentor_hidden_loss: bool = Field(
        True, description="hidden/attention terms also train the mentor (paper: yes)"
    )


#: keys that moved from ``fedkd`` to ``svd`` (old configs keep working)
_MOVED_TO_SVD = {"t_start": "t_start", "t_end": "t_end", "schedule": "schedule",
                 "error_feedback": "error_feedback", "factor_dtype": "factor_dtype",
                 "max_rank": "max_rank", "svd_method": "method", "server_path": "server_path"}


class SVDConfig(_Strict):
    """The truncated-SVD codec: energy schedule T (Eq. 9) and its extensions."""

    t_start: float = Field(0.95, gt=0.0, le=1.0)
    t_end: float = Field(0.98, gt=0.0, le=1.0)
    schedule: Literal["code", "endpoints", "fixed"] = Field(
        "code", description="code: t=(r+1)/R; endpoints: t=r/(R-1); fixed: T = t_end always"
    )
    # extensions beyond the paper (off by default)
    error_feedback: bool = Field(False, description="carry the truncated-SVD residual to the "
                                 "next round, per client and on the server")
    factor_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the SVD factors (and dense tensors) on the wire")
    max_rank: int | None = Field(None, ge=1, description="cap on K per matrix (None: no cap)")
    method: Literal["auto", "full", "gram", "randomized"] = Field(
        "auto", description="factorisation path (docs/PERFORMANCE.md)")
    server_path: Literal["auto", "dense", "factored"] = Field(
        "auto", description="server re-encode: SVD of the dense average, or exact SVD from the "
        "clients' factors without the dense matrix (auto: when cheaper)")

    @model_validator(mode="after")
    def _ordered(self) -> SVDConfig:
        if self.t_start > self.t_end:
            raise ValueError(f"t_start ({self.t_start}) must be <= t_end ({self.t_end})")
        return self


class FedPAQConfig(_Strict):
    bits: Literal[8, 16] = Field(8, description="quantisation levels 2**bits per tensor")
    rounding: Literal["stochastic", "nearest"] = Field(
        "stochastic", description="client upload rounding (server download: nearest)")


class TopKConfig(_Strict):
    ratio: float = Field(0.01, gt=0.0, le=1.0, description="share of entries sent per tensor")
    error_feedback: bool = Field(True, description="carry the unsent residual (both ends)")


class PowerSGDConfig(_Strict):
    rank: int = Field(4, ge=1, le=4096, description="rank r of the P Q^T approximation")
    error_feedback: bool = Field(True, description="carry the residual (both ends)")


class FedAvgConfig(_Strict):
    """The FedAvg family (fedavg, fedprox, scaffold and the codec aliases)."""

    model: Literal["mentee", "mentor"] = "mentee"
    codec: str = Field("dense", description="codec of the update: dense | svd | powersgd | "
                       "fedpaq | topk, another registered codec or module:attribute")


class FedProxConfig(_Strict):
    mu: float = Field(0.01, ge=0.0, le=1e4, description="proximal term (mu/2)||w - w_global||^2")


class LocalConfig(_Strict):
    model: Literal["mentor", "mentee"] = "mentor"


class RuntimeConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    server_device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int = Field(1, ge=1, le=1024)
    poll_interval_ms: float = Field(2.0, ge=0.0, le=1000.0, description="0 = block in MPI")
    progress: bool = True
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="NaN/Inf in a client's loss or update: stop the run (naming client "
        "and round) or skip that client's update for the round (recorded in clients/skipped)")
    resident_clients: int | None = Field(None, ge=1, description="private states kept in memory "
                                         "per rank (None: all); the rest spill to spill_dir")
    spill_dir: str | None = Field(None, description="node-local spill directory (None: $TMPDIR)")
    ranks_per_gpu: int = Field(1, ge=1, le=1024, description="client ranks that may share a GPU")
    checkpoint_every: int = Field(0, ge=0, description="rounds between checkpoints (0: only on "
                                  "SIGTERM/SIGUSR1)")
    checkpoint_dir: str | None = Field(None, description="None: <output>.ckpt")
    callbacks: list[str] = Field(default_factory=list, description="module:function called on "
                                 "rank 0 after every round with the round's record")
    tensorboard: str | None = Field(None, description="directory for TensorBoard event files "
                                    "(per-round and per-client scalars); None: off")
    lease_timeout_s: float = Field(120.0, ge=5.0, le=86400.0, description="seconds without a "
                                   "heartbeat after which the lease <output>.lock of a job on "
                                   "another host counts as stale (taken over)")


class Config(_Strict):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    output: str = "runs/run.h5"
    algorithm: str = Field("fedkd", description="fedkd | fedavg | fedprox | scaffold | local | "
                           "fedpaq | topk | powersgd (fedavg with that codec), another "
                           "registered algorithm or module:attribute")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    fedkd: FedKDConfig = FedKDConfig()
    svd: SVDConfig = SVDConfig()
    fedavg: FedAvgConfig = FedAvgConfig()
    fedprox: FedProxConfig = FedProxConfig()
    fedpaq: FedPAQConfig = FedPAQConfig()
    topk: TopKConfig = TopKConfig()
    powersgd: PowerSGDConfig = PowerSGDConfig()
    local: LocalConfig = LocalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="settings of plug-ins by their name, checked against "
        "the plug-in's own Settings model")

    @field_validator("output")
    @classmethod
    def _output_is_a_file_path(cls, value: str) -> str:
        """An empty ``output=`` (the working directory) or a path ending in '/' is not a
        file name; said here instead of 'is a directory' later."""
        if not value.strip():
            raise ValueError("must be a file path, e.g. output=runs/run.h5")
        if value.endswith(("/", os.sep)):
            raise ValueError("must be a file path, not a directory")
        if "\x00" in value:
            raise ValueError("must not contain a NUL byte")
        return value

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, tree: Any) -> Any:
        """``fedkd.t_start`` etc. (before the SVD codec had its own section) -> ``svd.*``."""
        if not isinstance(tree, dict) or not isinstance(tree.get("fedkd"), dict):
            return tree
        old = {k: v for k, v in tree["fedkd"].items() if k in _MOVED_TO_SVD}
        if not old:
            return tree
        svd = tree.get("svd") or {}
        if not isinstance(svd, dict):
            return tree
        for k in old:
            if _MOVED_TO_SVD[k] in svd:
                raise ValueError(f"fedkd.{k} and svd.{_MOVED_TO_SVD[k]} both given; "
                                 f"fedkd.{k} is the old name of svd.{_MOVED_TO_SVD[k]}")
        tree = dict(tree)
        tree["fedkd"] = {k: v for k, v in tree["fedkd"].items() if k not in _MOVED_TO_SVD}
        tree["svd"] = {**svd, **{_MOVED_TO_SVD[k]: v for k, v in old.items()}}
        return tree

    @model_validator(mode="after")
    def _sampling_fits(self) -> Config:
        n = self.train.sample_count
        if n is not None and n > self.data.num_clients:
            raise ValueError(f"train.sample_count ({n}) must be <= data.num_clients "
                             f"({self.data.num_clients})")
        return self

    @model_validator(mode="after")
    def _tokenizer(self) -> Config:
        d, m = self.data, self.model
        if m.kind == "hf" and d.tokenizer == "hash":
            raise ValueError("data.tokenizer 'hash' cannot feed a pretrained model "
                             "(model.kind hf); use auto")
        if d.tokenizer == "auto":
            d.tokenizer = m.pretrained if m.kind == "hf" else "hash"
        return self

    def to_yaml(self) -> str:
        """The resolved configuration as YAML text (stored in every HDF5 file)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


#: the file that makes a checkpoint directory usable (written last, see runtime/checkpoint.py)
CHECKPOINT_MANIFEST = "manifest.json"


def checkpoint_dir(cfg: Config) -> Path:
    """Where this run's checkpoints live (``runtime.checkpoint_dir``, default <output>.ckpt)."""
    return Path(cfg.runtime.checkpoint_dir or f"{cfg.output}.ckpt")


def resume_state(cfg: Config) -> str:
    """'resume' when the output file and a checkpoint manifest exist, else 'new' (no MPI)."""
    ready = Path(cfg.output).is_file() and (checkpoint_dir(cfg) / CHECKPOINT_MANIFEST).is_file()
    return "resume" if ready else "new"
