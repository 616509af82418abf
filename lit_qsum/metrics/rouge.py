"""Korean-aware ROUGE: rouge1/rouge2/rougeL F1 on Unicode or Kiwi-morpheme tokens, and a DDP-safe Metric.

Scores are sentence-level F1 on the whole token list (rougeL is plain LCS, not rougeLsum). With several
references, ``best`` takes the max over references for each metric separately, as rouge-score's
``score_multi`` and torchmetrics' ``accumulate="best"`` do, so rouge1 and rouge2 may come from different
references and ``rouge_sum`` is the sum of those maxima; ``mean`` averages each metric over references.
A prediction or reference with no tokens (n-grams) scores 0 against anything, itself included.
"""

import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_qsum.metrics.tokenizers import RougeTokenizer, check_tokenizer, tokenize

MultiRef = Literal["best", "mean"]
ROUGE_KEYS: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
_FIXED_POINT = 10**9  # SummaryRouge's F1 sums count units of 1e-9


def rouge_n(pred_tokens: Sequence[str], ref_tokens: Sequence[str], n: int) -> tuple[float, float, float]:
    """Return (precision, recall, F1) of clipped n-gram overlap; all 0 when either side has no n-gram."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pred, ref = _ngrams(pred_tokens, n), _ngrams(ref_tokens, n)
    return _prf(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def rouge_l(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> tuple[float, float, float]:
    """Return (precision, recall, F1) of the longest common subsequence; all 0 when either side is empty."""
    return _prf(lcs_length(pred_tokens, ref_tokens), len(pred_tokens), len(ref_tokens))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    # Bit-parallel LCS (Allison & Dix 1986, Hyyro 2004): one Python int holds a whole row of the O(n*m) DP
    # table, so a degenerate 10k-token generation costs ~10k big-int ops, not 1e8 interpreted steps.
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        matched = row & masks.get(token, 0)
        row = ((row + matched) | (row - matched)) & full
    return len(a) - row.bit_count()


def score_summary(
    prediction: str,
    references: Sequence[str] | str,
    tokenizer: RougeTokenizer = "default",
    multi_ref: MultiRef = "best",
) -> dict[str, float]:
    """Return rouge1/rouge2/rougeL F1 and ``rouge_sum`` for one prediction against 1..k references."""
    check_tokenizer(tokenizer)
    _check_multi_ref(multi_ref)
    refs = _reference_list(references, "references")
    pred_tokens = tokenize(prediction, tokenizer)
    if not pred_tokens:
        warnings.warn(f"prediction tokenizes to nothing with the {tokenizer!r} tokenizer; it scores 0", stacklevel=1)
    return _score_tokens(pred_tokens, [tokenize(ref, tokenizer) for ref in refs], multi_ref)


class SummaryRouge(Metric):
    """Mean rouge1/rouge2/rougeL F1 over examples (and their sum) on Korean-aware tokens."""

    # Not torchmetrics' ROUGEScore: its default normalizer erases Hangul, and its list states gather every
    # per-example score across ranks. Sums of F1 plus a count sync with one all-reduce and give the
    # example-level (macro) mean on any number of ranks.
    # The F1 sums are int64 in units of 1e-9, not floats: Lightning's bf16-true casts every float state
    # to bf16, where a sum stops growing after a few hundred examples. Integers are exact, equal in any
    # reduction order, and overflow only past ~9e9 examples.
    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        tokenizer: RougeTokenizer = "default",
        multi_ref: MultiRef = "best",
        **kwargs: Any,
    ) -> None:
        """Check the names and register sum states; ``kwargs`` go to ``torchmetrics.Metric``.

        Kiwi (``morpheme``) is imported at the first ``update``, so a model that only predicts needs no kiwipiepy.
        """
        super().__init__(**kwargs)
        check_tokenizer(tokenizer, installed=False)
        _check_multi_ref(multi_ref)
        self.tokenizer = tokenizer
        self.multi_ref = multi_ref
        for key in ROUGE_KEYS:
            self.add_state(f"{key}_sum", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_examples", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_empty_preds", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], references: Sequence[Sequence[str] | str]) -> None:
        """Score each prediction against its references: a list of 1..k strings, or one string."""
        if isinstance(preds, str):
            raise ValueError("preds must be a sequence of strings, got a single str")
        if len(preds) != len(references):
            raise ValueError(f"got {len(preds)} preds but {len(references)} references")
        ref_lists = [_reference_list(refs, f"references[{i}]") for i, refs in enumerate(references)]
        totals = dict.fromkeys(ROUGE_KEYS, 0.0)
        num_empty = 0
        for pred, refs in zip(preds, ref_lists):
            pred_tokens = tokenize(pred, self.tokenizer)
            num_empty += not pred_tokens
            scores = _score_tokens(pred_tokens, [tokenize(ref, self.tokenizer) for ref in refs], self.multi_ref)
            for key in ROUGE_KEYS:
                totals[key] += scores[key]
        if num_empty:
            # Plain warnings, not rank_zero_warn: each rank scores different examples.
            warnings.warn(
                f"{num_empty} of {len(preds)} predictions tokenize to nothing with the {self.tokenizer!r} "
                "tokenizer; they score 0",
                stacklevel=1,
            )
        for key in ROUGE_KEYS:
            state = getattr(self, f"{key}_sum")
            state += round(totals[key] * _FIXED_POINT)
        self.num_examples += len(preds)
        self.num_empty_preds += num_empty

    def compute(self) -> dict[str, Tensor]:
        """Return the mean F1 per metric (0..1) and ``rouge_sum`` (0..3)."""
        # clamp: with no examples every score is 0 (torchmetrics already warns about compute before update).
        count = self.num_examples.clamp(min=1)
        scores = {key: getattr(self, f"{key}_sum") / count / _FIXED_POINT for key in ROUGE_KEYS}
        scores["rouge_sum"] = torch.stack(list(scores.values())).sum()
        return scores


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _prf(overlap: int, num_pred: int, num_ref: int) -> tuple[float, float, float]:
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision, recall = overlap / num_pred, overlap / num_ref
    return precision, recall, 2 * precision * recall / (precision + recall)


def _score_tokens(pred_tokens: list[str], refs_tokens: list[list[str]], multi_ref: MultiRef) -> dict[str, float]:
    per_ref = [
        (rouge_n(pred_tokens, ref, 1)[2], rouge_n(pred_tokens, ref, 2)[2], rouge_l(pred_tokens, ref)[2])
        for ref in refs_tokens
    ]
    combine = max if multi_ref == "best" else statistics.fmean
    scores = {key: float(combine(column)) for key, column in zip(ROUGE_KEYS, zip(*per_ref))}
    scores["rouge_sum"] = sum(scores.values())
    return scores


def _reference_list(references: Sequence[str] | str, name: str) -> list[str]:
    """Accept one reference string as a list of one; refuse an example without references."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError(f"{name} is empty: every prediction needs at least one reference")
    if not all(isinstance(ref, str) for ref in refs):
        raise ValueError(f"{name} must hold strings, got {[type(ref).__name__ for ref in refs]}")
    return refs


def _check_multi_ref(multi_ref: str) -> None:
    if multi_ref not in get_args(MultiRef):
        raise ValueError(f"--model.rouge_multi_ref must be one of {get_args(MultiRef)}, got {multi_ref!r}")
