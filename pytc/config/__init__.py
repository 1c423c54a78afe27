"""Strict, validated configuration.

A config is YAML with one section per concern (system, model, data, optimizer, scheduler, training,
checkpoint, early_stopping, logging, inference, decoding, evaluation). Every section is a pydantic
model with ``extra="forbid"``: a misspelt key is an error with a did-you-mean suggestion, never
silently ignored. Each field has its default and a one-line description in the schema, and only
there; the JSON Schema (``pytc config schema``) and the README reference are generated from it.

What the package offers (everything is imported from ``pytc.config``):

- schema: :class:`PytcConfig` and its sections (:class:`SystemConfig`, :class:`ModelConfig`,
  :class:`DataConfig` with :class:`TargetConfig` and :class:`AugmentConfig`, :class:`OptimizerConfig`,
  :class:`SchedulerConfig`, :class:`TrainingConfig`, :class:`CheckpointConfig`,
  :class:`EarlyStoppingConfig`, :class:`LoggingConfig`, :class:`InferenceConfig`,
  :class:`DecodingConfig`, :class:`EvaluationConfig`).
- loading: :func:`load_config` (file, ``_base_`` chain, ``PYTC_SECTION__KEY`` environment variables,
  dotted overrides, lowest to highest precedence; :func:`load_config_with_sources` also says which
  keys a variable or an override set), :func:`config_from_dict`, :func:`dump_config`,
  :func:`config_files` (a config and its ``_base_`` chain), :func:`default_run_dir`,
  :func:`parse_overrides`, :func:`env_overrides`, :func:`deep_merge`.
- YAML: :func:`parse_yaml` / :func:`read_yaml`, the one strict, bounded reader every config, override
  and stored config goes through (limits :data:`MAX_CONFIG_BYTES`, :data:`MAX_CONFIG_VALUES`,
  :data:`MAX_CONFIG_DEPTH`).
- derived values, each worked out only here: :func:`as_zyx` (sizes as (Z, Y, X), 2D lifted to Z = 1),
  :func:`window_size` (the sliding window), :func:`inference_precision`.
- reference: :func:`config_schema` (JSON Schema), :func:`iter_fields`, :func:`reference_markdown`.

Modules: ``schema`` (the models), ``yaml_io`` (the reader), ``loading``, ``messages`` (one-line
validation errors), ``derived``, ``reference``; each imports only those before it in
schema → messages → yaml_io → loading, and derived and reference only schema.

Example:
    >>> from pytc.config import load_config
    >>> cfg = load_config("configs/lucchi.yaml", ["data.batch_size=4"])  # doctest: +SKIP
    >>> cfg.data.batch_size  # doctest: +SKIP
    4
"""

from pytc.config.derived import as_zyx, inference_precision, window_size
from pytc.config.loading import (
    BASE_KEY,
    DEFAULT_RUN_ROOT,
    ENV_DELIMITER,
    ENV_PREFIX,
    UNNAMED_RUN,
    config_files,
    config_from_dict,
    deep_merge,
    default_run_dir,
    dump_config,
    env_overrides,
    load_config,
    load_config_with_sources,
    parse_overrides,
)
from pytc.config.reference import config_schema, iter_fields, reference_markdown
from pytc.config.schema import (
    MAX_SEED,
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    DecodingConfig,
    EarlyStoppingConfig,
    EvaluationConfig,
    InferenceConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    PathList,
    PytcConfig,
    SchedulerConfig,
    SystemConfig,
    TargetConfig,
    TrainingConfig,
)
from pytc.config.yaml_io import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_CONFIG_VALUES, parse_yaml, read_yaml

__all__ = [
    "BASE_KEY", "DEFAULT_RUN_ROOT", "ENV_DELIMITER", "ENV_PREFIX", "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES", "MAX_SEED", "UNNAMED_RUN",
    "AugmentConfig", "CheckpointConfig", "DataConfig", "DecodingConfig", "EarlyStoppingConfig",
    "EvaluationConfig", "InferenceConfig", "LoggingConfig", "ModelConfig", "OptimizerConfig", "PathList",
    "PytcConfig", "SchedulerConfig", "SystemConfig", "TargetConfig", "TrainingConfig",
    "as_zyx", "config_files", "config_from_dict", "config_schema", "deep_merge", "default_run_dir",
    "dump_config", "env_overrides", "inference_precision", "iter_fields", "load_config", "load_config_with_sources",
    "parse_overrides", "parse_yaml", "read_yaml", "reference_markdown", "window_size",
]
