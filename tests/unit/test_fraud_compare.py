"""Agreement between the active model's verdicts and a shadow's, paired by transaction."""

from choreo.fraud_compare import agreement


def verdict(tx: str, decision: str, score: float, model: str) -> dict[str, object]:
    return {"transaction_id": tx, "decision": decision, "score": score, "model": model}


def test_agreement_pairs_by_transaction() -> None:
    scored = [
        verdict("a", "allow", 0.1, "m1"),
        verdict("b", "allow", 0.2, "m1"),
        verdict("c", "review", 0.5, "m1"),
        verdict("d", "block", 0.9, "m1"),
        verdict("e", "allow", 0.1, "m1"),  # scored before the shadow started: no pair
    ]
    shadow = [
        verdict("a", "allow", 0.15, "m2"),
        verdict("b", "review", 0.4, "m2"),
        verdict("c", "allow", 0.2, "m2"),
        verdict("d", "block", 0.95, "m2"),
    ]
    found = agreement(scored, shadow)
    assert found["pairs"] == 4
    assert found["models"] == ["m1 vs m2"]
    assert found["same_decision"] == 0.5
    assert found["decisions"]["allow"] == {"allow": 1, "review": 1, "block": 0}
    assert found["decisions"]["review"] == {"allow": 1, "review": 0, "block": 0}
    assert found["flagged"] == {"shadow_only": 1, "active_only": 1}
    assert found["score_gap"] == {"mean": 0.15, "max": 0.3}


def test_no_shadow_no_pairs() -> None:
    found = agreement([verdict("a", "allow", 0.1, "m1")], [])
    assert (found["pairs"], found["same_decision"], found["score_gap"]["mean"]) == (0, None, None)
