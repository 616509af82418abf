"""Summary metrics: Korean-aware ROUGE."""

from lit_qsum.metrics.rouge import MultiRef, SummaryRouge, rouge_l, rouge_n, score_summary
from lit_qsum.metrics.tokenizers import ROUGE_TOKENIZERS, RougeTokenizer, tokenize

__all__ = [
    "ROUGE_TOKENIZERS",
    "MultiRef",
    "RougeTokenizer",
    "SummaryRouge",
    "rouge_l",
    "rouge_n",
    "score_summary",
    "tokenize",
]
