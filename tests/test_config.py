"""The typed config: defaults, files, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from reidstream.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_every_default_key_is_typed_and_every_field_has_a_default() -> None:
    defaults = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    assert set(defaults) == set(fields)
    cfg = load_config()
    for section in fields:
        assert set(defaults[section]) == set(dataclasses.asdict(getattr(cfg, section)))


def test_overrides_are_typed_and_layered(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("model:\n  name: transreid\n  sie_coef: 1\n")
    cfg = load_config(user, ["model.size=small", "linker.threshold=0.5", "data.mean=[0,0,0]"])
    assert cfg.model.name == "transreid"
    assert cfg.model.size == "small"
    assert cfg.model.sie_coef == 1.0 and isinstance(cfg.model.sie_coef, float)
    assert cfg.linker.threshold == 0.5
    assert cfg.data.mean == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.nope=1", "unknown key"),
        ("nosection.key=1", "not a config section"),
        ("model.sie=maybe", "true/false"),
        ("model.img_height=tall", "expected int"),
        ("model", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_shipped_config_files_load() -> None:
    # Ray cluster configs beside them are Ray's, checked in test_cluster_configs.py.
    deploy = [p for p in REPO.glob("deploy/*.yaml") if not p.name.startswith("ray_cluster")]
    files = sorted([*deploy, *REPO.glob("train/configs/*.yaml")])
    assert deploy and files, "expected deploy/ and train/ configs"
    for path in files:
        load_config(path)
