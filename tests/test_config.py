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


def test_clip_baseline_takes_audio_and_video_only(tmp_path):
    cfg = load_config(None, ['train.clip_baseline=["video", "video", "audio"]'])
    assert cfg.train.clip_baseline == ["video", "audio"]
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, '[train]\nclip_baseline = ["text"]\n'))
    assert "train.clip_baseline" in str(e.value) and "video" in str(e.value)
    cfg = load_config(_toml(tmp_path, '[train]\nclip_baseline = ["audio"]\nclip_baseline_features = {audio = ["mfcc"]}\n'))
    assert cfg.train.clip_baseline_features == {"audio": ["mfcc"]}
    with pytest.raises(ConfigError) as e:    # features chosen for a modality that takes no baseline
        load_config(_toml(tmp_path, '[train]\nclip_baseline = ["video"]\nclip_baseline_features = {audio = ["mfcc"]}\n'))
    assert "clip_baseline_features" in str(e.value) and "audio" in str(e.value)


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


# ----------------------------------------------------------------------------- strict types

@pytest.mark.parametrize("line, key, value, allowed", [
    ('epochs = "8"', "train.epochs", '"8"', "an integer"),
    ('amp = "yes"', "train.amp", '"yes"', "true or false"),
    ("lr = true", "train.lr", "true", "a number"),
    ("seed = true", "train.seed", "true", "an integer"),
    ("epochs = 8.0", "train.epochs", "8.0", "an integer"),
    ('split = [0.7, "0.15", 0.15]', "train.split[1]", '"0.15"', "a number"),
])
def test_wrong_types_are_not_converted(tmp_path, line, key, value, allowed):
    path = _toml(tmp_path, f"[train]\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert key in msg and value in msg and f"expected {allowed}" in msg and str(path) in msg
    res = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert res.exit_code == 2 and key in res.stderr and "Traceback" not in res.stderr


def test_integer_is_accepted_for_a_number(tmp_path):
    cfg = load_config(_toml(tmp_path, "[train]\nlr = 1\ngrad_clip = 0\n[extract]\nfps = 25\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.extract.fps == 25.0 and cfg.train.grad_clip == 0.0


def test_set_values_keep_working_under_strict_types():
    cfg = load_config(None, ["train.epochs=8", "train.lr=1e-3", "model.use_dm=false", "train.amp=true",
                             "extract.text.model=bert-base-uncased", "extract.asr.model=\"tiny.en\"",
                             "train.out=2024", "demo.runs_dir=runs/x", "train.grad_clip=1"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.use_dm, cfg.train.amp) == (8, 1e-3, False, True)
    assert cfg.extract.text.model == "bert-base-uncased" and cfg.extract.asr.model == "tiny.en"
    assert cfg.train.out == "2024"                  # a text setting takes what was typed, as text
    assert cfg.demo.runs_dir == "runs/x" and cfg.train.grad_clip == 1.0
    for bad, fragment in (("train.epochs=8.5", "expected an integer"), ("train.amp=yes", "expected true or false"),
                          ("train.lr=true", "expected a number"), ("train.epochs=\"8\"", "expected an integer")):
        with pytest.raises(ConfigError, match=fragment):
            load_config(None, [bad])


# ----------------------------------------------------------------------------- settings checked together

@pytest.mark.parametrize("text, keys", [
    ("[extract.audio]\nf0_min = 300.0\nf0_max = 200.0\n", ["extract.audio.f0_min", "extract.audio.f0_max"]),
    ("[extract.audio]\nf0_min = 500.0\n", ["extract.audio.f0_min = 500.0", "extract.audio.f0_max = 500.0"]),
    ("[model]\nhidden_dim = 50\nnum_heads = 4\n", ["model.hidden_dim = 50", "model.num_heads = 4", "divisible"]),
    ("[demo]\nhidden_dim = 30\n", ["demo.hidden_dim = 30", "demo.num_heads = 4", "divisible"]),
    ("[train]\nsplit = [0.7, 0.2, 0.2]\n", ["train.split", "sum to 1.1"]),
    ("[train]\nsplit = [1.2, -0.1, -0.1]\n", ["train.split", "each in [0, 1]"]),
    ('[demo]\nval_metric = "MAD"\n', ["demo.val_metric", "MAD", "MAE"]),
    ('[demo]\nval_metric = "Acc"\n', ["demo.val_metric", "Acc"]),      # the demo trains a regression
    ("[demo]\nsentences = 3\n", ["demo.sentences", "at least 4"]),
])
def test_settings_that_do_not_fit_together_exit_2(tmp_path, text, keys):
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    for k in keys:
        assert k in str(e.value)
    res = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert res.exit_code == 2 and keys[0] in res.stderr


def test_settings_that_fit_together_load(tmp_path):
    cfg = load_config(_toml(tmp_path, "[model]\nhidden_dim = 48\nnum_heads = 6\n[train]\nsplit = [0.8, 0.2, 0.0]\n"
                                      "[demo]\nsentences = 4\nval_metric = \"Corr\"\n"))
    assert (cfg.model.hidden_dim, cfg.model.num_heads, cfg.demo.sentences) == (48, 6, 4)
    assert cfg.train.split == [0.8, 0.2, 0.0]
    # checked in with_overrides too (presets, the demo's settings)
    with pytest.raises(ConfigError, match="model.hidden_dim = 30 must be divisible by model.num_heads = 4"):
        with_overrides(PipelineConfig(), {"model.hidden_dim": 30, "model.num_heads": 4})


def test_unknown_key_suggests_the_closest_or_lists_the_section(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'train\.epochs'\?"):
        load_config(_toml(tmp_path, "[train]\nepochz = 3\n"))
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, "[extract.audio]\nwhatever = 3\n"))
    msg = str(e.value)
    assert "extract.audio.whatever" in msg
    assert "allowed keys in [extract.audio]: f0_max, f0_min, hop_ms, n_mfcc, rate_hz, win_ms" in msg


def test_errors_from_set_name_the_set_not_the_file(tmp_path):
    path = _toml(tmp_path, "[train]\nepochs = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.epochs=0"])
    assert str(e.value).startswith("--set train.epochs=0: 'train.epochs' = 0") and str(path) not in str(e.value)
    with pytest.raises(ConfigError) as e:           # a pair: the --set value is blamed, not the file
        load_config(None, ["extract.audio.f0_max=50"])
    assert str(e.value).startswith("--set extract.audio.f0_max=50: extract.audio.f0_min = 65.0 must be less")
    with pytest.raises(ConfigError, match=r"^--set train\.nope=1: unknown key 'train\.nope'"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match=r"^--set trian\.epochs=3: unknown key 'trian'.*did you mean 'train'"):
        load_config(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError) as e:           # the file's own mistake is the file's
        load_config(_toml(tmp_path, "[train]\nepochs = 0\n"), ["train.lr=1e-3"])
    assert str(e.value).startswith(f"{tmp_path / 'settings.toml'}: 'train.epochs' = 0") and "--set" not in str(e.value)
    res = CliRunner().invoke(main, ["train", "--set", "model.num_heads=7"])
    assert res.exit_code == 2
    assert res.stderr.startswith("config error: --set model.num_heads=7: model.hidden_dim = 50 must be divisible")
    assert "pipeline.toml" not in res.stderr


def test_demo_sentences_cli_and_setting_agree(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--sentences", "3", "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2 and "--sentences" in res.stderr and "3" in res.stderr
    res = CliRunner().invoke(main, ["demo", "--set", "demo.sentences=3", "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2 and "--set demo.sentences=3: 'demo.sentences' = 3: expected 0" in res.stderr
    assert not (tmp_path / "w").exists()
    assert load_config(None, ["demo.sentences=4"]).demo.sentences == 4


# ----------------------------------------------------------------------------- logging and errors

def _logging_run(*extra: str, checkpoint: str = "bogus.pt", tmp_path: Path) -> "object":
    """predict with an unusable checkpoint: it logs the checkpoint (INFO), then fails (exit 2)."""
    ckpt = tmp_path / checkpoint
    if checkpoint == "bogus.pt":
        ckpt.write_bytes(b"this is not a checkpoint")
    return CliRunner().invoke(main, ["predict", str(tmp_path / "clip.mp4"), "--checkpoint", str(ckpt), *extra])


def test_quiet_hides_info_and_v_shows_debug(tmp_path):
    plain = _logging_run(tmp_path=tmp_path)
    assert plain.exit_code == 2
    assert "INFO pipeline.inference.predict: checkpoint" in plain.stderr and "DEBUG" not in plain.stderr
    assert "not a readable dhmd-pipeline checkpoint" in plain.stderr
    quiet = _logging_run("--quiet", tmp_path=tmp_path)
    assert quiet.exit_code == 2
    assert quiet.stderr.splitlines() == [line for line in plain.stderr.splitlines() if not line.startswith("INFO")]
    assert len(quiet.stderr.splitlines()) == 1 and quiet.stderr.startswith("error: ")
    verbose = _logging_run("-v", "--set", "predict.top_atoms=3", tmp_path=tmp_path)
    assert verbose.exit_code == 2
    assert "DEBUG dhmd_pipeline: settings: " in verbose.stderr and "--set predict.top_atoms=3" in verbose.stderr
    assert "INFO pipeline.inference.predict: checkpoint" in verbose.stderr


def test_debug_shows_the_traceback_of_a_user_error_with_the_same_exit_status(tmp_path):
    plain = _logging_run("--quiet", checkpoint="missing.pt", tmp_path=tmp_path)
    assert plain.exit_code == 2
    assert plain.stderr.splitlines() == [f"error: {tmp_path / 'missing.pt'}: checkpoint not found"]
    debug = _logging_run("--quiet", "--debug", checkpoint="missing.pt", tmp_path=tmp_path)
    assert debug.exit_code == 2
    assert "Traceback (most recent call last)" in debug.stderr and "UserError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.splitlines()[0]
    bad = CliRunner().invoke(main, ["train", "--set", "train.epochs=0", "--debug"])
    assert bad.exit_code == 2 and "ConfigError" in bad.stderr and "Traceback" in bad.stderr


@pytest.mark.parametrize("verbose, quiet, shown", [
    (0, False, {"proj-info", "lib-warning"}),
    (1, False, {"proj-debug", "proj-info", "lib-warning"}),
    (2, False, {"proj-debug", "proj-info", "lib-debug", "lib-info", "lib-warning", "noisy-debug"}),
    (0, True, {"lib-warning"}),
    (3, True, {"lib-warning"}),              # --quiet wins
])
def test_log_levels(capsys, verbose, quiet, shown):
    import logging

    from pipeline.cli import _setup_logging

    from pipeline.logs import current_levels, log_levels, setup_logging

    root = logging.getLogger()
    _setup_logging(verbose, quiet)
    try:
        # what extraction workers are started with, and set up from, in their own processes
        assert current_levels() == log_levels(verbose, quiet)
        setup_logging(*current_levels())
        proj, lib, noisy = (logging.getLogger(n) for n in ("extractors.something", "somelib.module", "numba.core"))
        proj.debug("proj-debug")
        proj.info("proj-info")
        lib.debug("lib-debug")
        lib.info("lib-info")
        lib.warning("lib-warning")
        noisy.debug("noisy-debug")
        err = capsys.readouterr().err
    finally:   # the handler writes to capsys' stream: take it away again
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
    every = {"proj-debug", "proj-info", "lib-debug", "lib-info", "lib-warning", "noisy-debug"}
    assert {m for m in every if m in err} == shown


# ----------------------------------------------------------------------------- data/samples

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def test_sample_labels_and_sidecars_are_read_as_documented(tmp_path):
    from extractors.transcript import read_sidecar
    from pipeline.extract.labels import read_labels

    rows = {r["clip_id"]: r for r in read_labels(SAMPLES / "labels.csv")}
    assert list(rows) == ["review_01", "review_02", "review_03", "review_04"]
    assert [rows[c]["split"] for c in rows] == ["train", "train", "valid", "test"]
    assert rows["review_01"]["label"] == 2.4 and rows["review_04"]["text"] is None
    assert all(-3 <= r["label"] <= 3 and r["video_id"] == c for c, r in rows.items())
    json_tr = read_sidecar(SAMPLES / "review_01.mp4")            # no clip needed to read its sidecar
    assert json_tr.times_source == "sidecar" and json_tr.text == rows["review_01"]["text"]
    assert [w.text for w in json_tr.words] == "I loved this film the acting was wonderful".split()
    assert [w.start for w in json_tr.words] == sorted(w.start for w in json_tr.words)
    srt = read_sidecar(SAMPLES / "review_02.mp4")
    assert srt.times_source == "sidecar" and srt.text == rows["review_02"]["text"]
    assert srt.words[0].start == 0.0 and srt.words[-1].end == pytest.approx(2.76)
    assert srt.words[3].text == "dull" and srt.words[3].end == pytest.approx(1.18)   # end of the first cue
    assert read_sidecar(SAMPLES / "review_03.mp4") is None and read_sidecar(SAMPLES / "review_04.mp4") is None
    readme = (SAMPLES / "README.md").read_text()
    for name in ("labels.csv", "review_01.json", "review_02.srt", "dhmd-pipeline demo"):
        assert name in readme
    assert "*.mp4" in (SAMPLES / ".gitignore").read_text().split()          # clips made there stay out of git
