"""Optional BERT fine-tuned inside the model (config finetune_bert=True), as the DMD code does.

The text input is then (B, 3, T) int64: token ids, attention mask, segment ids (the MMSA `text_bert`
layout); the output is BERT's last hidden state (B, T, H), which the text projection consumes.
transformers is imported only here, and only when this switch is on.
"""
from __future__ import annotations

from torch import Tensor, nn


class BertTextEncoder(nn.Module):
    """Wraps transformers.AutoModel; pretrained=False builds the architecture from its config only
    (for loading a checkpoint that already holds the fine-tuned weights)."""

    def __init__(self, name_or_path: str, pretrained: bool = True) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if pretrained:
            self.bert = AutoModel.from_pretrained(name_or_path)
        else:
            self.bert = AutoModel.from_config(AutoConfig.from_pretrained(name_or_path))
        self.hidden_size = int(self.bert.config.hidden_size)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[1] != 3:
            raise ValueError(f"with finetune_bert the text input must be (B, 3, T) ids/mask/segments, "
                             f"got shape {tuple(tokens.shape)}")
        ids, mask, segments = tokens.long().unbind(dim=1)
        return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state
