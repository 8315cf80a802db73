"""How a shadow model agrees with the active one (`choreo fraud compare`).

Each `fraud.shadow` event has a `fraud.scored` for the same transaction (the active model's
verdict on the same features); they are paired by transaction id. Pure: the command reads
the events from stream FRAUD.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

DECISIONS = ("allow", "review", "block")


def agreement(
    scored: Iterable[Mapping[str, Any]], shadow: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Pairs of (active, shadow) verdicts by transaction: how often they decide alike, the
    decisions side by side, how far the scores are, and the models compared."""
    active = {str(v["transaction_id"]): v for v in scored}
    pairs = [(active[tx], v) for v in shadow if (tx := str(v["transaction_id"])) in active]
    table: Counter[tuple[str, str]] = Counter((a["decision"], s["decision"]) for a, s in pairs)
    same = sum(n for (a, s), n in table.items() if a == s)
    flagged = {
        "shadow_only": sum(n for (a, s), n in table.items() if a == "allow" != s),
        "active_only": sum(n for (a, s), n in table.items() if s == "allow" != a),
    }
    gaps = sorted(abs(float(a["score"]) - float(s["score"])) for a, s in pairs)
    return {
        "pairs": len(pairs),
        "models": sorted({f"{a['model']} vs {s['model']}" for a, s in pairs}),
        "same_decision": round(same / len(pairs), 4) if pairs else None,
        "decisions": {a: {s: table[a, s] for s in DECISIONS} for a in DECISIONS},
        "flagged": flagged,
        "score_gap": {
            "mean": round(sum(gaps) / len(gaps), 4) if gaps else None,
            "max": round(gaps[-1], 4) if gaps else None,
        },
    }
