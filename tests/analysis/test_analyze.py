"""dhmd-pipeline analyze on a tiny trained run, and the attention weights it recomputes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_train_helpers import TINY, make_pickle, set_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

EPOCHS = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """A 3-epoch tiny run on a planted pickle (valid split of 8) and its analysis of the test split."""
    tmp = tmp_path_factory.mktemp("analyze")
    data = make_pickle(tmp / "d.pkl", n_train=32, seed=3)
    res = _invoke(["train", "--data", str(data), "--out", str(tmp / "run"),
                   *set_args(TINY + [f"train.epochs={EPOCHS}", "train.early_stop_patience=0"])])
    assert res.exit_code == 0, res.output
    res = _invoke(["analyze", "--checkpoint", str(tmp / "run" / "best.pt"), "--out", str(tmp / "an")])
    assert res.exit_code == 0, res.output
    return tmp, json.loads((tmp / "an" / "analysis.json").read_text()), res.stdout


def test_every_section_with_its_shapes_and_a_png_each(analyzed):
    tmp, a, stdout = analyzed
    sections = ("unimodal_accuracy", "edges_by_epoch", "feature_embedding", "dictionary_by_class",
                "attention_maps")
    assert all(s in a for s in sections) and a["split"] == "test" and a["n"] == 8
    for s in sections:
        png = (tmp / "an" / f"{s}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000, s

    acc = a["unimodal_accuracy"]
    assert acc["accuracy_metric"] == "Has0_acc_2" and "fused" in stdout and "hetero" in stdout
    for space in ("homo", "hetero", "average"):
        assert set(acc[space]) == {"text", "audio", "video"}
        assert all(0.0 <= acc[space][m]["accuracy"] <= 1.0 for m in acc[space])
        assert all("MAE" in acc[space][m]["metrics"] for m in acc[space])
    # the two spaces' heads are scored on their own: their MAEs differ from the averaged head's
    maes = {s: [acc[s][m]["metrics"]["MAE"] for m in ("text", "audio", "video")] for s in ("homo", "hetero", "average")}
    assert maes["homo"] != maes["average"] and maes["hetero"] != maes["average"]

    edges = a["edges_by_epoch"]["epochs"]
    assert [e["epoch"] for e in edges] == list(range(1, EPOCHS + 1))
    for e in edges:
        for space in ("homo", "hetero"):
            w = np.asarray(e[space])
            assert w.shape == (3, 3) and np.allclose(np.diag(w), 0) and w.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(edges[0]["hetero"], edges[-1]["hetero"])        # the edges move in training

    emb = a["feature_embedding"]
    assert emb["method"] == "t-SNE"
    for space, dim in (("homo", 16), ("hetero", 32)):
        sp = emb["spaces"][space]
        assert np.asarray(sp["points"]).shape == (3 * 8, 2) and np.isfinite(sp["points"]).all()
        assert sp["modality"][:3] == ["text", "audio", "video"] and len(sp["class"]) == 24
        assert sp["dim"] == dim and set(sp["class"]) <= set(range(-3, 4))

    dic = a["dictionary_by_class"]
    assert dic["classes"] == sorted(set(dic["classes"])) and set(dic["classes"]) <= set(range(-3, 4))
    for space in ("homo", "hetero"):
        sp = dic["spaces"][space]
        mean = np.asarray(sp["mean"])
        assert mean.shape == (len(dic["classes"]), 16)                       # K = 16 in TINY
        assert np.allclose(mean.sum(1), 1.0, atol=1e-4) and sum(sp["count"]) == 8
        for i, c in enumerate(dic["classes"]):
            top = sp["top_atoms"][str(c)]
            assert len(top) == 5 and top[0] == int(np.argmax(mean[i]))

    att = a["attention_maps"]
    assert len(att["samples"]) == 3
    names = {f"{s}_to_{t}" for s in ("text", "audio", "video") for t in ("text", "audio", "video") if s != t}
    for sample in att["samples"]:
        assert set(sample["maps"]) == names
        for name, m in sample["maps"].items():
            m = np.asarray(m)
            assert m.ndim == 2 and np.allclose(m.sum(1), 1.0, atol=1e-4), name
        # a target's maps share its frame count; a source's width is its frame count
        assert np.asarray(sample["maps"]["audio_to_text"]).shape[0] == np.asarray(sample["maps"]["video_to_text"]).shape[0]
        assert np.asarray(sample["maps"]["audio_to_text"]).shape[1] == np.asarray(sample["maps"]["audio_to_video"]).shape[1]


def test_per_space_heads_are_the_models_own_and_differ_from_their_average():
    from dhmd import DHMD, DHMDConfig

    torch.manual_seed(0)
    model = DHMD(DHMDConfig(text_dim=6, audio_dim=5, video_dim=4, hidden_dim=8, num_heads=2, num_layers=1,
                            dictionary_size=8, gd_hidden=4)).eval()
    x = [torch.randn(4, 7, 6), torch.randn(4, 9, 5), torch.randn(4, 5, 4)]
    with torch.no_grad():
        out = model(*x)
    for m in ("text", "audio", "video"):
        avg = (out.unimodal_homo[m] + out.unimodal_hetero[m]) / 2
        assert torch.allclose(out.unimodal[m], avg, atol=1e-6)
        assert not torch.allclose(out.unimodal_homo[m], avg) and not torch.allclose(out.unimodal_hetero[m], avg)
    assert out.pooled_homo.shape == (4, 3, 8) and out.pooled_hetero.shape == (4, 3, 16)
    # the homogeneous head applied to the pooled homogeneous features gives that space's logits
    assert torch.allclose(model.head_homo(out.pooled_homo[:, 1]).squeeze(-1), out.unimodal_homo["audio"], atol=1e-6)


def test_recomputed_attention_weights_reproduce_the_layers_sdpa_output():
    """weights @ V equals the layer's own attention core output (so the maps are the model's attention)."""
    from dhmd.crossmodal import AttentionLayer, attend
    from pipeline.analysis.attention import attention_weights

    torch.manual_seed(1)
    layer = AttentionLayer(8, 2, 0.0, 0.0, 0.0, cross=True).eval()
    x, src = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    key_mask = torch.ones(2, 7, dtype=torch.bool)
    key_mask[1, 4:] = False
    w = attention_weights(layer, x, src, key_mask)                          # (B, h, Tq, Tk)
    assert w.shape == (2, 2, 5, 7) and torch.all(w[1, :, :, 4:] == 0)
    with torch.no_grad():
        q = layer._split(layer.to_q(layer.norm_q(x)))
        k, v = (layer._split(t) for t in layer.to_kv(layer.norm_kv(src)).chunk(2, dim=-1))
        expected = attend(q, k, v, key_mask, 0.0)
    torch.testing.assert_close(w @ v, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switches", [{"use_fd": False}, {"use_ca": False, "use_dm": False}])
def test_sections_of_an_ablated_model_mark_what_it_lacks(tmp_path, switches):
    """A model without FD has no homogeneous space; one without CA has no attention maps; without DM no
    dictionary: those parts are None / empty, the rest is computed and every PNG is still written."""
    from dhmd import DHMD, DHMDConfig
    from pipeline.analysis import analyze as an

    torch.manual_seed(0)
    model = DHMD(DHMDConfig(text_dim=6, audio_dim=5, video_dim=4, hidden_dim=8, num_heads=2, num_layers=1,
                            dictionary_size=8, gd_hidden=4, **switches)).eval()
    rng = np.random.default_rng(0)
    samples = [{"text": rng.normal(size=(7, 6)).astype(np.float32), "audio": rng.normal(size=(9, 5)).astype(np.float32),
                "video": rng.normal(size=(5, 4)).astype(np.float32), "label": float(v), "id": f"s{i}"}
               for i, v in enumerate(np.linspace(-2.5, 2.5, 12))]
    res = an.collect(model, samples, None, 5, "cpu")
    classes = an.sample_classes(res["labels"], "regression")
    analysis = {"unimodal_accuracy": an.unimodal_accuracy(res, "regression"),
                "edges_by_epoch": an.edges_by_epoch(tmp_path),
                "feature_embedding": an.feature_embedding(res, classes),
                "dictionary_by_class": an.dictionary_by_class(res, classes),
                "attention_maps": an.attention_maps(model, samples, None, "cpu")}
    no_homo = not switches.get("use_fd", True)
    assert (analysis["unimodal_accuracy"]["homo"] is None) == no_homo
    assert (analysis["feature_embedding"]["spaces"]["homo"] is None) == no_homo
    assert analysis["feature_embedding"]["spaces"]["hetero"] is not None
    assert (analysis["dictionary_by_class"]["spaces"]["hetero"] is None) == (not switches.get("use_dm", True))
    assert (analysis["attention_maps"]["samples"] == []) == (not switches.get("use_ca", True))
    assert analysis["edges_by_epoch"]["epochs"] == [] and "no edges" in analysis["edges_by_epoch"]["note"]
    paths = an.plot_all(analysis, tmp_path)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths) and len(paths) == 5
