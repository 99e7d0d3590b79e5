"""The loss on trained tokens only.

The output layer (a 49k vocabulary is ~1/5 of a small model's FLOPs) and the cross-entropy run
only at positions whose next token carries loss; `collate` says which (`target_at`).
"""

from torch import nn
from torch.nn import functional as F


class TokenLoss(nn.Module):
    """Summed cross-entropy over trained tokens, and how many there were.

    Wrapping the model in one module keeps DDP/FSDP hooks intact.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()

    def forward(self, input_ids, target_at, targets, attention_mask=None, position_ids=None, layout=None):
        extra = {"tunery_layout": layout} if layout is not None else {}
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              **extra).last_hidden_state  # (rows, T, H)
        h = hidden.flatten(0, 1)[target_at]  # (N, H)
        logits = self.lm_head(h).float()  # (N, V)
        return F.cross_entropy(logits, targets, reduction="sum"), targets.numel()
