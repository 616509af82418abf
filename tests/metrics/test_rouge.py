"""Tests for the Korean-aware ROUGE: hand-computed scores, Kiwi tokens, the Metric, properties, torchmetrics parity."""

import socket
import sys
import warnings
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_qsum.metrics import SummaryRouge, rouge_l, rouge_n, score_summary, tokenize
from lit_qsum.metrics.rouge import lcs_length
from lit_qsum.metrics.tokenizers import ROUGE_TOKENIZERS, check_tokenizer

KEYS = ("rouge1", "rouge2", "rougeL")
IGNORE_EMPTY = "ignore:prediction tokenizes to nothing"


def assert_scores(scores: dict[str, float], rouge1: Fraction, rouge2: Fraction, rouge_l_: Fraction) -> None:
    assert scores["rouge1"] == pytest.approx(float(rouge1))
    assert scores["rouge2"] == pytest.approx(float(rouge2))
    assert scores["rougeL"] == pytest.approx(float(rouge_l_))
    assert scores["rouge_sum"] == pytest.approx(float(rouge1 + rouge2 + rouge_l_))


# F1 = 2PR/(P+R) = 2 * overlap / (len_pred + len_ref), which is how the comments below count.


def test_tokenizers_on_a_speaker_tagged_korean_sentence() -> None:
    text = "#Person1#은 금요일 오후 7시에 예약한다."
    assert tokenize(text, "default") == ["person1", "은", "금요일", "오후", "7시에", "예약한다"]
    assert tokenize(text, "whitespace") == ["person1은", "금요일", "오후", "7시에", "예약한다"]
    assert tokenize("#Person1#은 7시!", "char") == ["p", "e", "r", "s", "o", "n", "1", "은", "7", "시"]
    assert tokenize("ＡＢＣ Straße, 3.5% 🙂 ...", "default") == ["abc", "strasse", "3", "5"]
    assert tokenize("\"Hello,\" she said... (twice)", "whitespace") == ["hello", "she", "said", "twice"]
    assert tokenize(" .,!? ", "default") == tokenize("", "whitespace") == tokenize("--", "char") == []


def test_whitespace_korean_by_hand() -> None:
    # pred [철수는, 사과를, 먹었다], ref [철수는, 배를, 먹었다]
    # rouge1: overlap {철수는, 먹었다} = 2 -> P = R = 2/3, F = 2/3
    # rouge2: (철수는,사과를) (사과를,먹었다) vs (철수는,배를) (배를,먹었다): overlap 0
    # rougeL: LCS 철수는 먹었다 = 2 -> 2/3
    scores = score_summary("철수는 사과를 먹었다", ["철수는 배를 먹었다"], tokenizer="whitespace")
    assert_scores(scores, Fraction(2, 3), Fraction(0), Fraction(2, 3))


def test_english_by_hand() -> None:
    # 6 tokens each; rouge1 clipped: the x2, cat, on, mat = 5 -> 5/6
    # rouge2: {the cat, on the, the mat} of 5 bigrams each -> 3/5
    # rougeL: the cat on the mat = 5 -> 5/6
    scores = score_summary("The cat sat on the mat.", ["the cat is on the mat"])
    assert_scores(scores, Fraction(5, 6), Fraction(3, 5), Fraction(5, 6))


def test_clipped_counts() -> None:
    # pred "the" x4 vs ref [the, cat]: overlap min(4, 1) = 1 -> P = 1/4, R = 1/2, F = 2/(4+2) = 1/3
    pred, ref = ["the"] * 4, ["the", "cat"]
    assert rouge_n(pred, ref, 1) == pytest.approx((1 / 4, 1 / 2, 1 / 3))
    assert rouge_n(pred, ref, 2) == (0.0, 0.0, 0.0)  # (the,the) never in ref
    assert rouge_l(pred, ref) == pytest.approx((1 / 4, 1 / 2, 1 / 3))  # LCS "the" = 1


def test_char_korean_by_hand() -> None:
    # pred [사 과 를 먹 다] (5), ref [배 를 먹 다] (4)
    # rouge1: {를, 먹, 다} = 3 -> F = 6/9 = 2/3
    # rouge2: {를먹, 먹다} of 4 and 3 bigrams -> F = 4/7
    # rougeL: 를 먹 다 = 3 -> 2/3
    scores = score_summary("사과를 먹다.", ["배를 먹다"], tokenizer="char")
    assert_scores(scores, Fraction(2, 3), Fraction(4, 7), Fraction(2, 3))


# Kiwi's tokens are pinned here so that a kiwipiepy model change shows up as a test failure.
KIWI_TOKENS = {
    "철수는 사과를 먹었다": ["철수", "는", "사과", "를", "먹", "었", "다"],
    "철수는 배를 먹었다": ["철수", "는", "배", "를", "먹", "었", "다"],
    "#Person1#은 금요일 오후 7시에 예약한다.": ["person1", "은", "금요일", "오후", "7", "시", "에", "예약", "하", "ᆫ다"],
    "#Person1#은 토요일 오후 7시에 예약을 취소한다.": [
        "person1", "은", "토요일", "오후", "7", "시", "에", "예약", "을", "취소", "하", "ᆫ다",
    ],
    "나는 어제 학교에 갔다.": ["나", "는", "어제", "학교", "에", "가", "었", "다"],
    "어제 나는 집에 갔다.": ["어제", "나", "는", "집", "에", "가", "었", "다"],
    "회의는 내일 오전 10시에 시작합니다.": ["회의", "는", "내일", "오전", "10", "시", "에", "시작", "하", "ᆸ니다"],
    "회의가 내일 10시에 시작된다.": ["회의", "가", "내일", "10", "시", "에", "시작", "되", "ᆫ다"],
}


@pytest.mark.parametrize("text", list(KIWI_TOKENS))
def test_kiwi_tokens_are_pinned(text: str) -> None:
    pytest.importorskip("kiwipiepy")
    assert tokenize(text, "morpheme") == KIWI_TOKENS[text]


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        # 7 vs 7 morphemes; rouge1: all but 사과/배 = 6 -> 6/7
        # rouge2: {철수는, 를먹, 먹었, 었다} = 4 of 6 and 6 -> 4/6 = 2/3; rougeL: 6 -> 6/7
        ("철수는 사과를 먹었다", "철수는 배를 먹었다", (Fraction(6, 7), Fraction(2, 3), Fraction(6, 7))),
        # 10 vs 12; rouge1: person1 은 오후 7 시 에 예약 하 ᆫ다 = 9 -> 18/22 = 9/11
        # rouge2: {person1-은, 오후-7, 7-시, 시-에, 에-예약, 하-ᆫ다} = 6 of 9 and 11 -> 12/20 = 3/5
        # rougeL: the same 9 in order -> 9/11
        (
            "#Person1#은 금요일 오후 7시에 예약한다.",
            "#Person1#은 토요일 오후 7시에 예약을 취소한다.",
            (Fraction(9, 11), Fraction(3, 5), Fraction(9, 11)),
        ),
        # 8 vs 8; rouge1: all but 학교/집 = 7 -> 7/8
        # rouge2: {나-는, 에-가, 가-었, 었-다} = 4 of 7 and 7 -> 4/7
        # rougeL: 나 는 에 가 었 다 = 6 (어제 and 나 swap order) -> 6/8 = 3/4
        ("나는 어제 학교에 갔다.", "어제 나는 집에 갔다.", (Fraction(7, 8), Fraction(4, 7), Fraction(3, 4))),
        # 10 vs 9; rouge1: 회의 내일 10 시 에 시작 = 6 -> 12/19
        # rouge2: {10-시, 시-에, 에-시작} = 3 of 9 and 8 -> 6/17; rougeL: 6 -> 12/19
        (
            "회의는 내일 오전 10시에 시작합니다.",
            "회의가 내일 10시에 시작된다.",
            (Fraction(12, 19), Fraction(6, 17), Fraction(12, 19)),
        ),
    ],
)
def test_morpheme_korean_by_hand(pred: str, ref: str, expected: tuple[Fraction, Fraction, Fraction]) -> None:
    pytest.importorskip("kiwipiepy")
    assert_scores(score_summary(pred, [ref], tokenizer="morpheme"), *expected)


def test_morphemes_see_more_overlap_than_eojeols() -> None:
    # whitespace: [나는, 어제, 학교에, 갔다] vs [어제, 나는, 집에, 갔다]
    # rouge1 3/4, no shared bigram, LCS 2 -> 1/2 (morphemes above: 7/8, 4/7, 3/4)
    scores = score_summary("나는 어제 학교에 갔다.", ["어제 나는 집에 갔다."], tokenizer="whitespace")
    assert_scores(scores, Fraction(3, 4), Fraction(0), Fraction(1, 2))


@pytest.mark.parametrize("tokenizer", ROUGE_TOKENIZERS)
@pytest.mark.parametrize("text", ["안녕하세요. 반갑습니다!", "#Person2#는 내일 회의를 취소하자고 제안한다."])
def test_hangul_never_scores_zero_for_identical_text(tokenizer: str, text: str) -> None:
    if tokenizer == "morpheme":
        pytest.importorskip("kiwipiepy")
    scores = score_summary(text, [text], tokenizer=tokenizer)
    assert scores == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rouge_sum": 3.0}


def test_torchmetrics_default_normalizer_erases_hangul() -> None:
    """Why this module exists: torchmetrics' ROUGE scores identical Korean text 0."""
    from torchmetrics.text.rouge import ROUGEScore

    scores = ROUGEScore(rouge_keys=("rouge1",))(["철수는 사과를 먹었다"], [["철수는 사과를 먹었다"]])
    assert scores["rouge1_fmeasure"] == 0.0


def test_multi_reference_best_is_per_metric_and_mean_averages() -> None:
    # pred [a b c d]
    # ref "d c b a": rouge1 4/4 -> 1, no shared bigram -> 0, LCS 1 -> 2/8 = 1/4
    # ref "a b x y": rouge1 {a, b} -> 1/2, rouge2 {a b} of 3 and 3 -> 1/3, LCS a b -> 1/2
    pred, refs = "a b c d", ["d c b a", "a b x y"]
    # best takes each metric's max on its own: rouge1 from ref 1, rouge2 and rougeL from ref 2
    assert_scores(score_summary(pred, refs, multi_ref="best"), Fraction(1), Fraction(1, 3), Fraction(1, 2))
    # mean: (1 + 1/2)/2 = 3/4, (0 + 1/3)/2 = 1/6, (1/4 + 1/2)/2 = 3/8
    assert_scores(score_summary(pred, refs, multi_ref="mean"), Fraction(3, 4), Fraction(1, 6), Fraction(3, 8))
    assert score_summary(pred, "a b x y") == score_summary(pred, ["a b x y"])  # one str = one reference


@pytest.mark.filterwarnings(IGNORE_EMPTY)
def test_empty_cases_score_zero() -> None:
    zeros = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rouge_sum": 0.0}
    assert score_summary("...", ["!!"]) == zeros  # both sides tokenize to nothing
    assert score_summary("a b", ["?"]) == zeros  # an empty reference matches nothing
    assert score_summary("word", ["word"])["rouge2"] == 0.0  # one token has no bigram
    with pytest.warns(UserWarning, match="prediction tokenizes to nothing"):
        assert score_summary("", ["a reference"]) == zeros


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="--model.rouge_tokenizer"):
        tokenize("x", "bpe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--model.rouge_tokenizer"):
        SummaryRouge(tokenizer="bpe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--model.rouge_multi_ref"):
        SummaryRouge(multi_ref="worst")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--model.rouge_multi_ref"):
        score_summary("a", ["a"], multi_ref="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be >= 1"):
        rouge_n(["a"], ["a"], 0)
    metric = SummaryRouge()
    with pytest.raises(ValueError, match="2 preds but 1 references"):
        metric.update(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        metric.update(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="single str"):
        metric.update("a b", ["a", "b"])  # type: ignore[arg-type]
    assert metric.num_examples == 0  # a refused batch leaves the state alone


def test_missing_kiwipiepy_names_the_extra_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # makes `import kiwipiepy` fail
    metric = SummaryRouge(tokenizer="morpheme")  # building it needs no Kiwi: predict never scores
    for make in (lambda: check_tokenizer("morpheme"), lambda: metric.update(["가"], [["가"]])):
        with pytest.raises(ImportError, match=r"--model.rouge_tokenizer morpheme.*pip install 'lit-qsum\[ko\]'"):
            make()


def test_metric_accumulates_the_mean_of_per_example_scores() -> None:
    preds = ["the cat sat on the mat", "a b c d", "철수는 사과를 먹었다", "hello world"]
    refs = [["the cat is on the mat"], ["d c b a", "a b x y"], ["철수는 배를 먹었다"], "hello there world"]
    metric = SummaryRouge(tokenizer="whitespace")
    metric.update(preds[:1], refs[:1])
    metric.update(preds[1:], refs[1:])
    per_example = [score_summary(p, r, tokenizer="whitespace") for p, r in zip(preds, refs)]
    result = metric.compute()
    assert set(result) == {*KEYS, "rouge_sum"}
    for key in (*KEYS, "rouge_sum"):
        assert result[key].item() == pytest.approx(sum(s[key] for s in per_example) / len(preds), abs=1e-6)
    assert metric.num_examples == 4 and metric.num_empty_preds == 0


def test_metric_warns_once_per_update_with_a_count() -> None:
    metric = SummaryRouge()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric.update(["", "a b", "..."], [["a b"], ["a b"], ["a b"]])
    assert [str(w.message) for w in caught] == [
        "2 of 3 predictions tokenize to nothing with the 'default' tokenizer; they score 0"
    ]
    assert metric.num_empty_preds == 2
    assert metric.compute()["rouge1"].item() == pytest.approx(1 / 3)  # the empties count as 0, not skipped


def test_compute_before_update_is_zero() -> None:
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        assert SummaryRouge().compute()["rouge_sum"].item() == 0.0


def test_states_are_sums_so_merging_shards_equals_one_pass() -> None:
    preds, refs = ["a b c", "x y", "", "p q r s"], [["a b d"], ["y x"], ["z"], ["p q", "r s"]]
    whole, first, second = SummaryRouge(), SummaryRouge(), SummaryRouge()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole.update(preds, refs)
        first.update(preds[:2], refs[:2])
        second.update(preds[2:], refs[2:])
    first.merge_state(second)
    for key, value in whole.compute().items():
        assert first.compute()[key].item() == pytest.approx(value.item())


def test_bf16_true_model_keeps_exact_sums() -> None:
    # Lightning's bf16-true calls module.to(torch.bfloat16); float sums would then stall near 256.
    metric = SummaryRouge().to(torch.bfloat16)
    for _ in range(10):
        metric.update(["the cat sat on the mat"] * 100, [["the cat is on the mat"]] * 100)
    assert metric.compute()["rouge1"].item() == pytest.approx(5 / 6, abs=1e-6)


def _ddp_worker(rank: int, port: int, preds: list[str], refs: list[list[str]], expected: dict[str, float]) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metric = SummaryRouge()
        metric.update(preds[rank::2], refs[rank::2])  # uneven shards: 3 examples on rank 0, 2 on rank 1
        result = metric.compute()
        for key, value in expected.items():
            assert abs(result[key].item() - value) < 1e-6, (rank, key, result[key].item(), value)
    finally:
        dist.destroy_process_group()


def test_ddp_sync_gives_the_example_level_mean() -> None:
    preds = ["a b c", "x y z w", "a b", "p q r", "the cat"]
    refs = [["a b d"], ["x y"], ["b a"], ["p q", "q r"], ["the cat sat"]]
    single = SummaryRouge()
    single.update(preds, refs)
    expected = {key: value.item() for key, value in single.compute().items()}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, preds, refs, expected), nprocs=2, join=True)


# --- properties -----------------------------------------------------------------------------------

TEXT = st.text(st.sampled_from(list("ab가나다 .,#1Z")) | st.characters(), max_size=40)
FAST_TOKENIZERS = st.sampled_from(["default", "whitespace", "char"])


@pytest.mark.filterwarnings(IGNORE_EMPTY)
@given(pred=TEXT, refs=st.lists(TEXT, min_size=1, max_size=3), tokenizer=FAST_TOKENIZERS,
       multi_ref=st.sampled_from(["best", "mean"]))
def test_scores_lie_in_unit_interval(pred: str, refs: list[str], tokenizer: str, multi_ref: str) -> None:
    scores = score_summary(pred, refs, tokenizer=tokenizer, multi_ref=multi_ref)
    assert all(0.0 <= scores[key] <= 1.0 for key in KEYS)
    assert scores["rouge_sum"] == pytest.approx(sum(scores[key] for key in KEYS))


@given(text=TEXT, tokenizer=FAST_TOKENIZERS)
def test_identical_texts_score_one(text: str, tokenizer: str) -> None:
    tokens = tokenize(text, tokenizer)
    if not tokens:
        return
    scores = score_summary(text, [text], tokenizer=tokenizer)
    assert scores["rouge1"] == scores["rougeL"] == 1.0
    assert scores["rouge2"] == (1.0 if len(tokens) >= 2 else 0.0)


@pytest.mark.filterwarnings(IGNORE_EMPTY)
@given(a=TEXT, b=TEXT, tokenizer=FAST_TOKENIZERS)
def test_f1_is_symmetric_for_one_reference(a: str, b: str, tokenizer: str) -> None:
    assert score_summary(a, [b], tokenizer=tokenizer) == score_summary(b, [a], tokenizer=tokenizer)


@pytest.mark.filterwarnings(IGNORE_EMPTY)
@settings(max_examples=30, deadline=None)  # deadline: the first call loads Kiwi's model
@given(a=st.text(st.sampled_from(list("가나다를은는 사과 .먹었다#P1")), max_size=30),
       b=st.text(st.sampled_from(list("가나다를은는 사과 .먹었다#P1")), max_size=30))
def test_morpheme_properties(a: str, b: str) -> None:
    pytest.importorskip("kiwipiepy")
    scores = score_summary(a, [b], tokenizer="morpheme")
    assert all(0.0 <= scores[key] <= 1.0 for key in KEYS)
    assert scores == score_summary(b, [a], tokenizer="morpheme")
    if tokenize(a, "morpheme"):
        assert score_summary(a, [a], tokenizer="morpheme")["rouge1"] == 1.0


def _lcs_dp(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@given(a=st.lists(st.sampled_from("abcd"), max_size=25), b=st.lists(st.sampled_from("abcd"), max_size=25))
def test_bit_parallel_lcs_matches_the_dp(a: list[str], b: list[str]) -> None:
    assert lcs_length(a, b) == _lcs_dp(a, b)


def test_lcs_of_a_degenerate_long_generation() -> None:
    tokens = [str(i % 97) for i in range(20_000)]  # 4e8 DP cells; bit-parallel takes ~0.1 s
    assert lcs_length(tokens, tokens) == 20_000
    assert lcs_length(tokens, ["0"] * 5) == 5


# --- parity with torchmetrics on plain lowercase ASCII, where its normalizer is harmless --------------

WORDS = st.lists(st.sampled_from(["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(WORDS, st.lists(WORDS, min_size=1, max_size=3)), min_size=1, max_size=4),
       multi_ref=st.sampled_from(["best", "mean"]))
def test_matches_torchmetrics_rouge_on_ascii(pairs: list, multi_ref: str) -> None:
    try:
        from torchmetrics.text.rouge import ROUGEScore

        reference = ROUGEScore(rouge_keys=KEYS, accumulate="best" if multi_ref == "best" else "avg")
    except (ImportError, ModuleNotFoundError) as err:  # pragma: no cover - depends on the install
        pytest.skip(f"torchmetrics ROUGEScore unavailable: {err}")
    preds = [" ".join(pred) for pred, _ in pairs]
    refs = [[" ".join(ref) for ref in ref_list] for _, ref_list in pairs]
    expected = reference(preds, refs)
    ours = SummaryRouge(multi_ref=multi_ref)
    ours.update(preds, refs)
    result = ours.compute()
    for key in KEYS:
        assert result[key].item() == pytest.approx(expected[f"{key}_fmeasure"].item(), abs=1e-5)
