"""The suite's YAML configs as files: where a name is found and what a file composes.

An entry config (``configs/nmtune_ood.yaml``) lists fragments under ``compose:`` (a stage base,
a method, a task); ``train.py`` passes each as its own ``--config`` before the entry file, so
jsonargparse merges them in that order and the entry's own keys win. Tools that read a run's
options without jsonargparse (the sweep) merge the same files with ``composed_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
COMPOSE_KEY = "compose"


def find_config(value: str) -> str:
    """``value`` when it is a path (or found nowhere), else the config of that name under
    ``configs/``."""
    if Path(value).exists() or not (CONFIG_DIR / value).is_file():
        return value
    return str(CONFIG_DIR / value)


def composition(value: str, chain: tuple[Path, ...] = ()) -> list[str]:
    """The config files that ``--config value`` stands for, in merge order: the fragments its
    ``compose:`` lists (each with its own fragments first), then the file itself. A fragment is
    looked up beside the file, then under the suite's ``configs/``."""
    path = Path(value)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return [value]  # train.py's file check or jsonargparse names the problem
    fragments = content.get(COMPOSE_KEY) if isinstance(content, dict) else None
    if fragments is None:
        return [value]
    if not isinstance(fragments, list) or not all(isinstance(f, str) for f in fragments):
        raise ConfigError(
            f"--config {value}: compose must be a list of config files, got {fragments!r}"
        )
    chain = (*chain, path.resolve())
    files = []
    for fragment in fragments:
        places = (path.parent / fragment, CONFIG_DIR / fragment)
        found = next((place for place in places if place.is_file()), None)
        if found is None:
            raise ConfigError(
                f"--config {value}: compose lists {fragment!r}, which is neither in "
                f"{path.parent} nor in {CONFIG_DIR}"
            )
        if found.resolve() in chain:
            raise ConfigError(f"--config {value}: compose includes itself through {fragment!r}")
        files += composition(str(found), chain)
    return [*files, value]


def composed_config(value: str) -> dict[str, Any]:
    """The YAML of ``value`` and its fragments merged as jsonargparse merges them: mappings
    key by key, any other value (a list included) replaced by the later file's."""
    merged: dict[str, Any] = {}
    for path in composition(find_config(value)):
        merged = deep_merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    merged.pop(COMPOSE_KEY, None)
    return merged


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
