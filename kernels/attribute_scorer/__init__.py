"""ExIQA attribute scorer: P(a|I) and P(d|I) for a batch, compiled C++ (CPU/CUDA) with a PyTorch fallback.

Public API: `attribute_scores`, `attribute_scores_reference`, `attribute_scores_backend`; `group_softmax`
gives the attribute weights w_ad of Eq. 7.
"""

from .op import attribute_scores, attribute_scores_backend
from .reference import attribute_scores_reference, group_softmax

__all__ = ["attribute_scores", "attribute_scores_backend", "attribute_scores_reference", "group_softmax"]
