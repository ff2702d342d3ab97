"""Run configuration: the schema (schema.py) and its loading from YAML and overrides
(loader.py). Import everything from here: ``from fedkd_mpi.config import load_config``."""

from fedkd_mpi.config.loader import (
    MAX_CONFIG_BYTES,
    apply_override,
    changed_settings,
    config_from_dict,
    config_from_yaml_text,
    load_config,
)
from fedkd_mpi.config.schema import (
    CHECKPOINT_MANIFEST,
    Config,
    ConfigError,
    DataConfig,
    FedAvgConfig,
    FedKDConfig,
    ModelConfig,
    RuntimeConfig,
    SVDConfig,
    TrainConfig,
    TransformerSpec,
    checkpoint_dir,
    resume_state,
)

__all__ = ["CHECKPOINT_MANIFEST", "MAX_CONFIG_BYTES", "Config", "ConfigError", "DataConfig",
           "FedAvgConfig", "FedKDConfig", "ModelConfig", "RuntimeConfig", "SVDConfig",
           "TrainConfig", "TransformerSpec", "apply_override", "changed_settings", "checkpoint_dir",
           "config_from_dict", "config_from_yaml_text", "load_config", "resume_state"]
