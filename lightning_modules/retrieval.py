"""Image-text retrieval over a whole evaluation set, as a torchmetrics ``Metric``.

Recall needs every pair of the set at once (each query ranks all keys), so the embeddings and
caption tokens are ``"cat"`` states: torchmetrics gathers them from every rank, in rank order,
before ``compute``, and ranks may hold different numbers of pairs (or none).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

RECALL_AT = (1, 5)


def retrieval_recall(
    image: torch.Tensor, text: torch.Tensor, tokens: torch.Tensor, chunk: int = 1024
) -> dict[str, torch.Tensor]:
    """Recall@k of paired embeddings (row i of each is one pair), image->text and text->image.

    Copies of one caption (templated or boilerplate web text) are one answer: image->text ranks
    the distinct captions, and text->image counts every image paired with that caption as a hit.
    Otherwise the top 5 could be five copies of one caption, tied in an arbitrary order.
    """
    distinct, caption_ids = torch.unique(tokens, dim=0, return_inverse=True)
    rows = torch.arange(len(tokens), device=tokens.device)
    first = torch.full((len(distinct),), len(tokens), device=tokens.device)
    first = first.scatter_reduce(0, caption_ids, rows, reduce="amin")
    directions = {
        "image_to_text": (image, text[first], torch.arange(len(distinct), device=tokens.device)),
        "text_to_image": (text, image, caption_ids),
    }
    results = {}
    for direction, (queries, keys, key_ids) in directions.items():
        top_k = min(max(RECALL_AT), len(keys))
        hits = torch.cat(
            [
                key_ids[(queries[start : start + chunk] @ keys.T).topk(top_k, dim=1).indices]
                == caption_ids[start : start + chunk, None]
                for start in range(0, len(queries), chunk)
            ]
        )
        for k in RECALL_AT:
            results[f"{direction}_R@{k}"] = hits[:, :k].any(dim=1).float().mean()
    return results


class RetrievalRecall(Metric):
    """``retrieval_recall`` of all pairs seen since the last ``reset``, on every rank.

    Args:
        embed_dim: Width of the image and text embeddings.
        context_length: Tokens per caption (captions are compared by their tokens).
    """

    full_state_update = False

    def __init__(self, embed_dim: int, context_length: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.context_length = context_length
        for name in ("image", "text", "tokens"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._add_empty_blocks()

    def _add_empty_blocks(self) -> None:
        """An empty block of the right shape and dtype in every state: a rank that sees no
        pair then sends (0, D) rows, not torchmetrics' 1-d float placeholder, which cannot be
        concatenated with the other ranks' rows."""
        self.image.append(torch.empty(0, self.embed_dim, device=self.device))
        self.text.append(torch.empty(0, self.embed_dim, device=self.device))
        self.tokens.append(
            torch.empty(0, self.context_length, dtype=torch.long, device=self.device)
        )

    def reset(self) -> None:
        super().reset()
        self._add_empty_blocks()

    def update(self, image: torch.Tensor, text: torch.Tensor, tokens: torch.Tensor) -> None:
        self.image.append(image.float())
        self.text.append(text.float())
        self.tokens.append(tokens.long())

    def compute(self) -> dict[str, torch.Tensor]:
        """Recall@1 and @5 in both directions; an empty dict when no rank saw a pair."""
        image = torch.cat(self.image) if isinstance(self.image, list) else self.image
        if len(image) == 0:
            return {}
        text = torch.cat(self.text) if isinstance(self.text, list) else self.text
        tokens = torch.cat(self.tokens) if isinstance(self.tokens, list) else self.tokens
        return retrieval_recall(image, text, tokens)
