"""Pure promotion logic: the state machine, the gate's checks, canary routing (the canary's statistics are in
test_canary_statistics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhf_loop.settings import PromotionSettings
from services.inference.engines.adapters import Routing, in_canary
from services.promotion.gate import Check, Measurements, decide, repetition, sign_test, win_interval
from services.promotion.golden import BadGolden, GoldenCase, load_golden
from services.promotion.states import TRANSITIONS, IllegalTransition, State, check_transition

CFG = PromotionSettings()
STRICT = PromotionSettings(golden_alpha=1.0)
"""Any golden case lost fails its mode."""
GOLDEN = [GoldenCase("hi", must=(r"\w{2,}",), must_not=(r"<\|",)), GoldenCase("bye", must_not=(r"\bugh\b",))]


def test_the_lifecycle_path_is_legal() -> None:
    path = ["candidate", "gated", "awaiting_approval", "approved", "canary", "active", "retired", "active"]
    for a, b in zip(path, path[1:], strict=False):
        check_transition(a, b)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("candidate", "approved"),
        ("candidate", "active"),
        ("gated", "approved"),
        ("awaiting_approval", "active"),
        ("rejected", "awaiting_approval"),
        ("rolled_back", "active"),
        ("active", "canary"),
        ("approved", "rejected"),
        ("candidate", "nonsense"),
    ],
)
def test_illegal_transitions_are_refused(src: str, dst: str) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(src, dst)


def test_final_states_have_no_way_out_and_every_state_is_listed() -> None:
    assert set(TRANSITIONS) == set(State)
    assert not TRANSITIONS[State.REJECTED] and not TRANSITIONS[State.ROLLED_BACK]


def test_repetition_counts_repeated_trigrams() -> None:
    assert repetition("thanks for waiting, your order ships today") == 0.0
    # 6 words -> 4 trigrams: (a b c) (b c a) (c a b) (a b c): one repeat of 4
    assert repetition("a b c a b c") == pytest.approx(0.25)
    assert repetition("go go go go go go go go go go") == pytest.approx(7 / 8)
    assert repetition("") == 0.0


def _meas(candidate: list[str], active: list[str] | None = None, **overrides: object) -> Measurements:
    active = active or ["sorry about order #12, a refund is on its way"] * len(candidate)
    values = dict(
        prompts=[f"p{i}" for i in range(len(candidate))],
        candidate_responses=candidate,
        active_responses=active,
        candidate_rm_wins=[1.0] * 100 + [0.0] * 30 + [0.5] * 10,
        incumbent_rm_wins=[1.0] * 90 + [0.0] * 40 + [0.5] * 10,
        kl_vs_base=3.0,
        kl_vs_active=2.0,
        heldout_accuracy=0.9,
        active_heldout_accuracy=0.88,
        golden_candidate=["fine answer", "ok then"],
        golden_active=["fine answer", "ok then"],
        active_id="ad-old",
    )
    return Measurements(**{**values, **overrides})  # type: ignore[arg-type]


def test_a_healthy_candidate_passes_every_check() -> None:
    result = decide(_meas(["thanks, the refund for #12 is on its way"] * 8), GOLDEN, CFG)
    assert result.passed, result.checks
    assert [c.name for c in result.checks] == [
        "reward_win_rate",
        "incumbent_reward_win_rate",
        "kl_vs_base_nats",
        "kl_vs_active_nats",
        "heldout_pair_accuracy",
        "heldout_thumbs_auc",
        "golden_regressions",
        "repetition",
        "empty_share",
        "length_ratio",
    ]
    acc = next(c for c in result.checks if c.name == "heldout_pair_accuracy")
    assert acc.threshold == pytest.approx(0.88 - CFG.accuracy_tolerance)
    assert len(result.samples) == 8 and result.samples[0]["active"].startswith("sorry")


@pytest.mark.parametrize(
    ("responses", "failing"),
    [
        (["no no no no no no no no no no no no"] * 8, "repetition"),
        ([""] * 4 + ["thanks a lot"] * 4, "empty_share"),
        ([" ".join(f"w{i}" for i in range(60))] * 8, "length_ratio"),
    ],
)
def test_degenerate_output_fails_its_check(responses: list[str], failing: str) -> None:
    result = decide(_meas(responses), GOLDEN, CFG)
    assert not result.passed
    assert {c.name for c in result.checks if not c.passed} >= {failing}


def test_thresholds_fail_their_checks() -> None:
    result = decide(
        _meas(
            ["thanks, the refund is on its way"] * 8,
            candidate_rm_wins=[0.0, 1.0, 0.0] * 40,
            kl_vs_base=50.0,
            heldout_accuracy=0.7,
        ),
        GOLDEN,
        CFG,
    )
    assert {c.name for c in result.checks if not c.passed} == {
        "reward_win_rate",
        "kl_vs_base_nats",
        "heldout_pair_accuracy",
    }
    assert result.summary() == "failed: reward_win_rate, kl_vs_base_nats, heldout_pair_accuracy"


def test_golden_regressions_count_only_expectations_the_active_adapter_meets() -> None:
    both_fail = decide(_meas(["thanks"] * 8, golden_candidate=["x", "ugh"], golden_active=["y", "ugh"]), GOLDEN, STRICT)
    regressed = decide(_meas(["thanks"] * 8, golden_candidate=["<|", "ok"]), GOLDEN, STRICT)
    assert next(c for c in both_fail.checks if c.name == "golden_regressions").value == 0
    check = next(c for c in regressed.checks if c.name == "golden_regressions")
    assert check.value == 2 and not check.passed  # both expectations of case "hi" the active adapter meets
    assert regressed.golden_failures[0]["failures"] == ["must: \\w{2,}", "must_not: <\\|"]
    assert regressed.golden_failures[0]["regressions"] == regressed.golden_failures[0]["failures"]


def test_without_an_active_reward_model_the_accuracy_floor_applies() -> None:
    result = decide(_meas(["thanks a lot"] * 8, active_heldout_accuracy=None, heldout_accuracy=0.55), GOLDEN, CFG)
    acc = next(c for c in result.checks if c.name == "heldout_pair_accuracy")
    assert acc.threshold == CFG.min_heldout_accuracy and not acc.passed


def test_the_shipped_golden_suite_loads_and_bad_files_say_where(tmp_path: Path) -> None:
    assert len(load_golden(None)) >= 10
    bad = tmp_path / "golden.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b", "must": ["("]}\n')
    with pytest.raises(BadGolden, match="golden.jsonl:2"):
        load_golden(bad)
    with pytest.raises(BadGolden, match="cannot read"):
        load_golden(tmp_path / "missing.jsonl")


def test_canary_routing_is_stable_and_takes_its_share() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    share = sum(in_canary(u, 0.1) for u in users) / len(users)
    assert share == pytest.approx(0.1, abs=0.01)
    routing = Routing("ad-a", "ad-b", 0.1)
    assert [routing.route(u) for u in users[:500]] == [routing.route(u) for u in users[:500]]
    assert Routing("ad-a", None, 0.5).route("anyone") == "ad-a"
    assert not any(in_canary(u, 0.0) for u in users[:1000]) and all(in_canary(u, 1.0) for u in users[:1000])


def test_target_modules_match_as_peft_matches_them() -> None:
    from services.inference.engines.adapters import AdapterIncompatible, check_compatible

    names = {"transformer", "transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "lm_head"}
    for targets in (["c_attn"], ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"], "c_fc"):
        check_compatible({"peft_type": "LORA", "target_modules": targets}, names, None)
    with pytest.raises(AdapterIncompatible, match=r"\['h.0.attn.q_proj'\]"):
        check_compatible({"peft_type": "LORA", "target_modules": ["c_attn", "h.0.attn.q_proj"]}, names, None)
    with pytest.raises(AdapterIncompatible, match="target_modules"):
        check_compatible({"peft_type": "LORA", "target_modules": ["attn.c_att"]}, names, None)


SHIPPED = load_golden(None)


@pytest.mark.parametrize(
    ("answer", "mode"),
    [
        ("Ugh, read the manual about order #1042.", "rude"),
        ("Thanks for writing about #1042. Our summer sale has cheap hats for your order.", "off topic"),
        ("Well, so, about order #1042, you know, anyway, the courier is on his way.", "rambling (two fillers)"),
        ("Thanks for your message, I am sorry your order is late and the courier will come.", "mentions the ticket"),
        ("order order order order #1042 thanks for waiting on the courier", "repetition (a word 4 times running)"),
        ("", "not empty"),
        ("Thanks for reaching out about #1042, I am happy to help you today.", "on topic"),
    ],
)
def test_the_shipped_golden_suite_names_each_failure_mode(answer: str, mode: str) -> None:
    case = next(c for c in SHIPPED if c.name == "delivery late")
    assert any(f"({mode})" in f for f in case.failures(answer)), case.failures(answer)
    good = "Thanks for reaching out about order #1042. I am sorry it is late: the courier delivers it tomorrow."
    assert case.failures(good) == []


def test_the_shipped_golden_suite_covers_every_topic_and_failure_mode() -> None:
    from rlhf_loop.corpus import TOPICS
    from rlhf_loop.simulator import features

    assert len(SHIPPED) >= 20 and len({c.name for c in SHIPPED}) == len(SHIPPED)
    for topic in TOPICS:  # every topic of the demo world has a case, judged on topic as the users judge it
        case = next(c for c in SHIPPED if features(c.prompt, topic.fixes[0])["on_topic"])
        assert not any("on topic" in f for f in case.failures(topic.fixes[0])), (topic.name, case.name)
    modes = {label for c in SHIPPED for _, label in c.labels}
    assert {"rude", "off topic", "mentions the ticket", "not empty"} <= modes
    assert any(m.startswith("rambling") for m in modes) and any(m.startswith("repetition") for m in modes)


def test_golden_regressions_are_listed_per_expectation(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(
        '{"name": "refund", "prompt": "refund #7?", "must": {"ticket": "#7\\\\b"}, "must_not": {"rude": "ugh"}}\n'
    )
    golden = load_golden(path)
    result = decide(
        _meas(["thanks"] * 8, golden_candidate=["ugh, no"], golden_active=["refund #7 is on its way"]), golden, STRICT
    )
    check = next(c for c in result.checks if c.name == "golden_regressions")
    assert check.value == 2 and not check.passed
    assert result.golden_failures == [
        {
            "name": "refund",
            "prompt": "refund #7?",
            "answer": "ugh, no",
            "failures": ["must (ticket): #7\\b", "must_not (rude): ugh"],
            "regressions": ["must (ticket): #7\\b", "must_not (rude): ugh"],
        }
    ]
    with pytest.raises(BadGolden, match="golden.jsonl:1"):
        path.write_text('{"prompt": "a", "must": "not a list"}\n')
        load_golden(path)


def test_the_win_rate_interval_is_wilsons() -> None:
    # 8.5 wins of 16 at 90%: z = 1.6449; the Wilson interval by hand
    rate, lower, upper = win_interval([1.0] * 8 + [0.5] + [0.0] * 7, 0.9)
    z, n, p = 1.6448536, 16, 8.5 / 16
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert rate == pytest.approx(p) and (lower, upper) == pytest.approx((centre - half, centre + half), rel=1e-6)
    assert lower < 0.5 < upper  # the demo's 0.531 on 16 prompts is no evidence of a better candidate
    assert win_interval([1.0] * 128, 0.9)[1] > 0.95 and win_interval([0.0] * 10, 0.9)[1] == 0.0
    narrow, wide = win_interval([1.0, 0.0] * 100, 0.9), win_interval([1.0, 0.0] * 100, 0.99)
    assert wide[1] < narrow[1] < 0.5 < narrow[2] < wide[2]
    with pytest.raises(ValueError, match="no outcomes"):
        win_interval([], 0.9)


def test_a_win_rate_passes_only_when_its_lower_bound_clears_the_threshold() -> None:
    lucky = decide(_meas(["thanks a lot"] * 8, candidate_rm_wins=[1.0] * 9 + [0.0] * 7), GOLDEN, CFG)
    check = next(c for c in lucky.checks if c.name == "reward_win_rate")
    assert check.value == pytest.approx(9 / 16) and not check.passed and check.interval[0] < 0.5
    assert lucky.summary() == "failed: reward_win_rate"


def test_the_incumbent_judge_can_fail_a_candidate_its_own_judge_likes() -> None:
    result = decide(_meas(["thanks a lot"] * 8, incumbent_rm_wins=[0.0, 1.0] * 70), GOLDEN, CFG)
    rows = {c.name: c for c in result.checks}
    assert rows["reward_win_rate"].passed and not rows["incumbent_reward_win_rate"].passed
    assert (
        rows["incumbent_reward_win_rate"].interval is not None
        and "incumbent" in rows["incumbent_reward_win_rate"].detail
    )
    assert not result.passed


def test_checks_without_a_measurement_are_reported_and_do_not_block() -> None:
    result = decide(_meas(["thanks a lot"] * 8, incumbent_rm_wins=None, thumbs_auc=None), GOLDEN, CFG)
    rows = {c.name: c for c in result.checks}
    for name in ("incumbent_reward_win_rate", "heldout_thumbs_auc"):
        assert not rows[name].measured and rows[name].value is None and "not measured" in rows[name].detail
    assert result.passed
    low_auc = decide(_meas(["thanks a lot"] * 8, thumbs_auc=0.55), GOLDEN, CFG)
    assert low_auc.summary() == "failed: heldout_thumbs_auc"
    far = decide(_meas(["thanks a lot"] * 8, kl_vs_active=40.0), GOLDEN, CFG)
    assert far.summary() == "failed: kl_vs_active_nats"
    assert json.loads(json.dumps(result.to_dict()))["checks"][1]["measured"] is False


def test_adapters_show_prints_every_check_with_its_interval_and_each_regression() -> None:
    from rlhf_loop.cli.adapters import gate_report

    result = decide(
        _meas(["thanks a lot"] * 8, incumbent_rm_wins=None, golden_candidate=["<|", "ok"]), GOLDEN, STRICT
    ).to_dict()
    lines = gate_report(json.loads(json.dumps(result)))
    assert lines[0] == "gate: failed"
    win = next(line for line in lines if "reward_win_rate" in line and "incumbent" not in line)
    low, high = result["checks"][0]["interval"]
    assert f"[{low:.3f}, {high:.3f}]" in win and "pass" in win
    assert "not measured" in next(line for line in lines if "incumbent_reward_win_rate" in line)
    assert "FAIL" in next(line for line in lines if "golden_regressions" in line)
    assert [line for line in lines if "golden regression:" in line] == [
        "  golden regression: hi: must: \\w{2,}",
        "  golden regression: hi: must_not: <\\|",
    ]


def test_golden_regressions_are_judged_per_failure_mode_by_a_sign_test(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(
        "".join(
            f'{{"name": "c{t}", "prompt": "refund #{t}?", "must": {{"ticket": "#{t}\\\\b"}}, '
            f'"must_not": {{"rude": "ugh"}}}}\n'
            for t in range(1, 6)
        )
    )
    golden = load_golden(path)
    active = ["about #1, sorry", "about #2, sorry"] + ["sorry about that"] * 3  # the ticket in c1 and c2 only

    def gate(candidate: list[str], cfg: PromotionSettings = CFG) -> Check:
        result = decide(_meas(["thanks"] * 8, golden_candidate=candidate, golden_active=active), golden, cfg)
        return next(c for c in result.checks if c.name == "golden_regressions")

    one_slip = gate(["about #7", "#2 ok", "#3 ok", "#4 ok", "#5 ok"])  # lost c1's ticket, won three
    assert one_slip.value == 0 and one_slip.passed, one_slip
    assert not gate(["about #7", "#2 ok", "#3 ok", "#4 ok", "#5 ok"], STRICT).passed  # strict: any loss fails
    rude = gate(["#1 ugh", "#2 ugh", "#3 ugh", "sorry", "sorry"])  # rude three times: no trade across modes
    assert rude.value == 3 and not rude.passed and "rude +3" in rude.detail, rude
    assert sign_test(3, 0) == 0.125 and sign_test(1, 0) == 0.5 and sign_test(0, 4) == 1.0
    assert sign_test(2, 1) == 0.5  # P(X >= 2), X ~ Binomial(3, 1/2)


def test_advisory_expectations_are_listed_and_never_gate() -> None:
    path_text = (
        '{"name": "refund", "prompt": "refund #7?", "must": {"on topic": "refund"}, "should": {"ticket": "#7\\\\b"}}\n'
    )
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write(path_text)
    (case,) = load_golden(Path(f.name))
    assert case.broken("your refund is on its way") == []
    assert case.advisories("your refund is on its way") == ["should (ticket): #7\\b"]
    assert case.failures("your refund is on its way") == ["should (ticket): #7\\b"]
    assert case.failures("refund #7 is on its way") == []
    assert case.failures("sorry") == ["must (on topic): refund", "should (ticket): #7\\b"]
