"""Loading a config: files with their ``_base_`` chain, environment and command-line overrides.

:func:`load_config`, lowest to highest precedence:
  1. the ``_base_`` chain (``_base_: other.yaml`` or a list; paths relative to the file),
  2. the file itself,
  3. environment variables ``PYTC_<SECTION>__<KEY>`` (e.g. ``PYTC_DATA__BATCH_SIZE=4``),
  4. dotted CLI overrides (``data.batch_size=8 model.filters=[16,32,64]``), parsed as YAML values.

Mappings merge (:func:`deep_merge`), everything else replaces. :func:`config_from_dict` validates
the merged dict; :func:`dump_config` writes a config back as YAML, and :func:`default_run_dir`
says where a run writes when no directory is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from pytc.config.messages import _short, format_validation_error
from pytc.config.schema import PytcConfig
from pytc.config.yaml_io import parse_yaml, read_yaml
from pytc.errors import ConfigError

ENV_PREFIX = "PYTC_"
ENV_DELIMITER = "__"
BASE_KEY = "_base_"


def deep_merge(base: dict, over: dict) -> dict:
    """Return ``base`` updated recursively with ``over`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_files(path: str | os.PathLike) -> list[Path]:
    """The config file and every file of its ``_base_`` chain, resolved (the files a run reads:
    nothing may be written over them). Unreadable links in the chain are left out here; loading
    the config reports them."""
    files: list[Path] = []

    def walk(file: Path) -> None:
        try:
            data = read_yaml(file)
            file = file.resolve()
        except (ConfigError, OSError, RuntimeError):
            return
        if file in files:
            return
        files.append(file)
        bases = data.get(BASE_KEY)
        for base in [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []:
            if isinstance(base, str):
                walk(file.parent / base)

    walk(Path(os.fspath(path)))
    return files


def _load_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    data = read_yaml(path)  # first: a missing file, a symlink loop or a FIFO is refused before resolving
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"_base_ cycle: {cycle}; remove one of the _base_ references")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, _load_with_bases(path.parent / base, (*chain, path)))
    return deep_merge(merged, data)


def parse_overrides(overrides: list[str] | None) -> dict:
    """Turn ``["data.batch_size=8", "model.filters=[16,32]"]`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {_short(item)} must look like section.key=value, e.g. data.batch_size=8")
        if "[" in key:
            raise ConfigError(f"override {_short(item)}: list items cannot be set one by one; give the whole list, "
                              "e.g. data.targets='[{name: binary}, {name: contour}]'")
        value = parse_yaml(raw, f"override {_short(item)}") if raw.strip() else None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {_short(item)} conflicts with {'.'.join(parts[: i + 1])}={_short(nxt)}")
            node = nxt
        node[parts[-1]] = value
    return out


def env_overrides() -> dict:
    """Overrides from ``PYTC_SECTION__KEY`` environment variables (via pydantic-settings)."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(
        PytcConfig, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, case_sensitive=False
    )
    return source()


def config_from_dict(data: dict, origin: str = "config", sources: dict[str, str] | None = None) -> PytcConfig:
    """Validate a nested dict into a :class:`PytcConfig`, turning errors into one-line ConfigErrors.

    ``sources`` maps dotted keys to where their values came from (a command-line override, an
    environment variable); errors under those keys name that instead of ``origin``.
    """
    try:
        return PytcConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin, sources or {})) from None


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        out += _leaves(v, key + ".") if isinstance(v, dict) and v else [key]
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PytcConfig:
    """Load a config file with its ``_base_`` chain, env overrides and dotted CLI overrides.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: ``section.key=value`` strings, values parsed as YAML (``model.filters=[16,32]``).

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file, ``_base_`` cycle, unknown key (with a did-you-mean), wrong type.
    """
    return load_config_with_sources(path, overrides)[0]


def load_config_with_sources(path: str | os.PathLike | None = None,
                             overrides: list[str] | None = None) -> tuple[PytcConfig, dict[str, str]]:
    """:func:`load_config`, and which keys the ``PYTC_`` variables and the overrides set.

    Returns:
        ``(cfg, sources)``: ``sources`` maps each dotted key set on top of the file to what set it,
        as messages name it (``"override model.filters=[8,16]"``, ``"environment variable
        PYTC_MODEL__FILTERS"``); an override wins over a variable for the same key.
    """
    data = _load_with_bases(Path(path)) if path is not None else {}
    env, cli = env_overrides(), parse_overrides(overrides)
    sources = {k: f"environment variable {ENV_PREFIX}{k.replace('.', ENV_DELIMITER).upper()}" for k in _leaves(env)}
    given = {item.partition("=")[0].strip(): item for item in overrides or []}
    sources.update({k: f"override {_short(given.get(k, k))}" for k in _leaves(cli)})
    data = deep_merge(deep_merge(data, env), cli)
    cfg = config_from_dict(data, origin=str(path) if path is not None else "config", sources=sources)
    return cfg, sources


DEFAULT_RUN_ROOT = "runs"
UNNAMED_RUN = "pytc"  # the run folder's name for a config built in code (no file to name it after)


def default_run_dir(cfg: PytcConfig, config_path: str | os.PathLike | None = None) -> Path:
    """The run directory when none is given: ``system.output_dir``, else ``runs/<config file name>``.

    A config built in code (``config_path`` None) runs in ``runs/pytc``.

    Example:
        >>> default_run_dir(load_config(None), "configs/lucchi.yaml").as_posix()
        'runs/lucchi'
    """
    if cfg.system.output_dir:
        return Path(cfg.system.output_dir)
    name = Path(config_path).stem if config_path is not None else UNNAMED_RUN
    return Path(DEFAULT_RUN_ROOT) / name


def dump_config(cfg: PytcConfig) -> str:
    """The resolved config as YAML; loading it again gives an equal config.

    ``model.spatial_dims`` / ``model.input_size`` that merely follow ``data.patch_size`` are written
    as null, so an edited patch size in the dumped file still reaches the network.
    """
    data = cfg.model_dump(mode="json")
    patch, model = data["data"]["patch_size"], data["model"]
    if model["input_size"] == patch:
        model["input_size"] = None
    if model["spatial_dims"] == len(patch):
        model["spatial_dims"] = None
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
