"""pipeline.toml <-> typed config: defaults, validation, --set overrides, CLI exit statuses."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel
from click.testing import CliRunner

from pipeline.cli import _stage, main
from pipeline.config import DEFAULT_CONFIG, ConfigError, PipelineConfig, load_config, with_overrides
from pipeline.errors import NotBuiltError


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "settings.toml"
    p.write_text(text)
    return p


def test_pipeline_toml_matches_code_defaults():
    assert load_config(DEFAULT_CONFIG) == PipelineConfig()


def test_every_setting_in_pipeline_toml_has_a_comment():
    import tomllib

    text = DEFAULT_CONFIG.read_text()
    flat = []

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat.append(k)

    walk(tomllib.loads(text), "")
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in flat:
            assert "#" in line.split("=", 1)[1], f"setting without a comment: {line}"
    # and every field of the code appears in the file
    def fields(model, prefix=""):
        for name, f in type(model).model_fields.items():
            v = getattr(model, name)
            if isinstance(v, BaseModel):
                yield from fields(v, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"
    raw = tomllib.loads(text)
    for dotted in fields(PipelineConfig()):
        node = raw
        for part in dotted.split("."):
            assert part in node, f"{dotted} is missing from pipeline.toml"
            node = node[part]


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    with pytest.raises(ConfigError, match="bogus_key"):
        load_config(_toml(tmp_path, "[train]\nbogus_key = 3\n"))


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="trian"):
        load_config(_toml(tmp_path, "[trian]\nepochs = 3\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, '[train]\nepochs = "many"\n'))
    assert "train.epochs" in str(e.value) and "many" in str(e.value)


def test_out_of_range_names_key_value_and_bound(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, "[extract.face]\nmin_detection_confidence = 1.5\n"))
    msg = str(e.value)
    assert "extract.face.min_detection_confidence" in msg and "1.5" in msg and "less than or equal to 1" in msg


def test_bad_choice_lists_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, '[align]\nmode = "sideways"\n'))
    assert "align.mode" in str(e.value) and "aligned" in str(e.value)


def test_invalid_toml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_toml(tmp_path, "[train\n"))


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_set_overrides_parse_toml_values():
    cfg = load_config(None, ["train.epochs=8", "extract.text.model=bert-base-uncased", "model.use_dm=false",
                             "train.split=[0.8, 0.1, 0.1]", "train.lr=3e-4"])
    assert cfg.train.epochs == 8
    assert cfg.extract.text.model == "bert-base-uncased"
    assert cfg.model.use_dm is False
    assert cfg.train.split == [0.8, 0.1, 0.1]
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.batch_size == PipelineConfig().train.batch_size  # untouched


def test_set_override_wins_over_file(tmp_path):
    cfg = load_config(_toml(tmp_path, "[train]\nepochs = 3\n"), ["train.epochs=5"])
    assert cfg.train.epochs == 5


@pytest.mark.parametrize("bad, fragment", [("train.epochs", "section.key=value"),
                                           ("epochs=3", "must name a section"),
                                           ("train.epochs=0", "train.epochs"),
                                           ("train.nope=1", "nope"),
                                           ("train.epochs.deep=1", "not a section")])
def test_bad_set_overrides(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [bad])


def test_with_overrides_validates():
    cfg = with_overrides(PipelineConfig(), {"model.hidden_dim": 30, "train.batch_size": 4})
    assert (cfg.model.hidden_dim, cfg.train.batch_size) == (30, 4)
    with pytest.raises(ConfigError, match="hidden_dim"):
        with_overrides(PipelineConfig(), {"model.hidden_dim": -1})


def test_cli_help_lists_every_subcommand():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("extract", "train", "evaluate", "predict", "export", "demo"):
        assert name in result.output


@pytest.mark.parametrize("command", ["extract", "train", "evaluate", "predict", "export", "demo"])
def test_each_subcommand_has_help_with_the_common_options(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    for opt in ("--config", "--set", "--verbose", "--quiet", "--debug"):
        assert opt in result.output


def test_train_with_unknown_key_exits_2_naming_the_key(tmp_path):
    cfg = _toml(tmp_path, "[train]\nepochz = 3\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--config", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "epochz" in proc.stderr
    assert "Traceback" not in proc.stderr  # one clear line, not a traceback


def test_bad_set_on_cli_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["extract", str(tmp_path), "--set", "extract.fps=-3"])
    assert result.exit_code == 2
    assert "extract.fps" in result.output


def test_stage_that_is_not_built_says_so():
    with pytest.raises(NotBuiltError, match="not built yet"):
        _stage("pipeline.no_such_stage_module", "run", "frobnicate")
