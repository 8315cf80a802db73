"""Training the fraud scorer's logistic regression on generated, labelled transactions.

`choreo fraud train` generates one data set per seed with `choreo.generate`, replays each
through the scorer's own feature extraction (`services.fraud.domain.assess`, in timestamp
order, a fresh state per seed), and fits a logistic regression with an L2 penalty by Newton's
method (IRLS) on standardized inputs. Everything is deterministic: the same seeds and n give
the same model file, byte for byte. The held-out seed is only scored, never fitted on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

import choreo.generate
import choreo.generate_handbook
from choreo.fraud_eval import Label, evaluate
from services.fraud.domain import assess
from services.fraud.feedback import Label as FeedbackLabel
from services.fraud.feedback import interleave
from services.fraud.model import INPUTS, Model
from services.fraud.records import Line, Tx, chronological
from services.fraud.rules import ScoringConfig
from services.fraud.windows import DAY, State, record

Generator = Callable[[int, int], tuple[list[dict[str, Any]], list[dict[str, Any]]]]
# The labelled data sets a model can be trained and evaluated on (docs/fraud.md).
GENERATORS: dict[str, Generator] = {
    "choreo": choreo.generate.generate,
    "handbook": choreo.generate_handbook.generate_handbook,
}
FEEDBACK_DELAY = DAY  # labels arrive a day after their transaction (cardholder reports)
# Training replays each seed once per delay: a day (cardholder reports) and a week (slower
# chargebacks), so that the model reads the label inputs well whichever delay it meets.
FEEDBACK_DELAYS = (DAY, 7 * DAY)
TRAIN_SEEDS = (101, 102)  # never used for evaluation
HOLDOUT_SEED = 42
N = 60_000
L2 = 1.0  # on the standardized weights; the intercept is not penalized
NEWTON_STEPS = 50
TOLERANCE = 1e-10

Matrix = npt.NDArray[np.float64]


def data_version(generators: Sequence[str] = ("choreo",)) -> str:
    """What the training data depends on: the generators' source (code and parameters)."""
    modules = {"choreo": choreo.generate, "handbook": choreo.generate_handbook}
    digest = hashlib.sha256()
    for name in generators:
        digest.update(inspect.getsource(modules[name]).encode())
    return f"{'+'.join(generators)} sha256:{digest.hexdigest()[:16]}"


def as_lines(transactions: list[dict[str, Any]]) -> list[Line]:
    """Generated transactions as the lines of a file of bare transaction objects."""
    return [Line(i, None, tx, in_event=False) for i, tx in enumerate(transactions, 1)]


def replay(
    transactions: Sequence[dict[str, Any]],
    cfg: ScoringConfig,
    truth: Mapping[str, bool] | None = None,
    feedback_delay: float = FEEDBACK_DELAY,
) -> Matrix:
    """The model inputs of each transaction, in the order given, as the scorer sees them;
    with `truth`, each label is fed back `feedback_delay` seconds after its transaction."""
    timed = ((Tx.parse(tx).ts, tx["transaction_id"], tx) for tx in transactions)
    return inputs_of(interleave(timed, truth or {}, feedback_delay), cfg)


def inputs_of(stream: Iterable[dict[str, Any] | FeedbackLabel], cfg: ScoringConfig) -> Matrix:
    """The model inputs of each transaction of `stream`, as a fresh scorer sees them, the
    labels among them learnt as they come."""
    state = State()
    rows = []
    for item in stream:
        if isinstance(item, FeedbackLabel):
            state.feedback.learn(item)
            continue
        parsed = Tx.parse(item)
        f, _ = assess(parsed, state, cfg)
        rows.append([f["inputs"][name] for name in INPUTS])
        record(parsed, state)
    return np.array(rows, dtype=np.float64)


def labelled_inputs(
    data: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    cfg: ScoringConfig,
    feedback_delay: float = FEEDBACK_DELAY,
) -> tuple[Matrix, Matrix]:
    """Inputs and 0/1 labels of one labelled data set (transactions, labels), in the order
    the scorer replays it, its labels fed back `feedback_delay` seconds after each payment."""
    transactions, labels = data
    fraud = {lb["transaction_id"]: lb["is_fraud"] for lb in labels}
    ordered = [
        line.data
        for line in chronological(
            Line(i, None, tx, in_event=False) for i, tx in enumerate(transactions, 1)
        )
    ]
    y = np.array([float(fraud[tx["transaction_id"]]) for tx in ordered])
    return replay(ordered, cfg, fraud, feedback_delay), y


def fit(x: Matrix, y: Matrix, l2: float = L2) -> tuple[Matrix, Matrix, Matrix, float]:
    """Means, scales, weights and intercept of an L2-penalized logistic regression."""
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    # A constant input (or one whose spread rounds to 0 in the file): weight 0 under the
    # penalty, harmless.
    scales[scales < 1e-9] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - means) / scales])
    beta = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(z @ beta)))
        gradient = z.T @ (p - y) + penalty * beta
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if float(np.abs(step).max()) < TOLERANCE:
            break
    return means, scales, beta[1:], float(beta[0])


def train(
    n: int = N,
    seeds: Sequence[int] = TRAIN_SEEDS,
    holdout_seed: int = HOLDOUT_SEED,
    cfg: ScoringConfig | None = None,
    progress: Callable[[str], None] = lambda _: None,
    generators: Sequence[str] = ("choreo", "handbook"),
    feedback_delays: Sequence[float] = FEEDBACK_DELAYS,
) -> Model:
    """Fit on the training seeds of each generator, each replayed once per feedback delay;
    the model file records how, and its figures on each generator's held-out seed (with the
    first delay)."""
    cfg = cfg or ScoringConfig()
    if holdout_seed in seeds:
        raise ValueError(f"holdout seed {holdout_seed}: also a training seed")
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown or not generators:
        raise ValueError(f"generators: {unknown or 'none'}; choose from {', '.join(GENERATORS)}")
    if not feedback_delays:
        raise ValueError("feedback delays: need at least one")
    parts = []
    for name in generators:
        for seed in seeds:
            data = GENERATORS[name](n, seed)
            for delay in feedback_delays:
                progress(f"replaying {name} seed {seed} (n={n}), feedback after {delay:g} s")
                parts.append(labelled_inputs(data, cfg, delay))
    x = np.vstack([part[0] for part in parts])
    y = np.concatenate([part[1] for part in parts])
    progress(f"fitting on {len(y)} transactions ({int(y.sum())} fraudulent)")
    model = fitted_model(
        x,
        y,
        {
            "n": n,
            "generators": list(generators),
            "seeds": list(seeds),
            "l2": L2,
            "transactions": len(y),
            "feedback_delays_s": list(feedback_delays),
        },
        data_version(generators),
    )
    holdouts = {}
    for name in generators:
        progress(f"scoring {name} held-out seed {holdout_seed} (n={n})")
        transactions, labels = GENERATORS[name](n, holdout_seed)
        report = evaluate(
            as_lines(transactions),
            {lb["transaction_id"]: Label(lb["is_fraud"], lb["scenario"]) for lb in labels},
            cfg,
            model,
            feedback_delay=feedback_delays[0],
        )
        holdouts[name] = {
            "generator": name,
            "n": n,
            "seed": holdout_seed,
            "feedback_delay_s": feedback_delays[0],
            **report.summary(),
        }
    about = {**model.about, "holdout": holdouts[generators[0]], "holdouts": holdouts}
    return replace(model, about=about)


def fitted_model(x: Matrix, y: Matrix, training: dict[str, Any], data: str) -> Model:
    """The model fitted on inputs `x` (columns: INPUTS) and labels `y`, versioned by its
    parameters; `training` and `data` say what it was fitted on."""
    means, scales, weights, intercept = fit(x, y)
    model = Model(
        version="",
        features=INPUTS,
        means=_rounded(means),
        scales=_rounded(scales),
        weights=_rounded(weights),
        intercept=round(intercept, 10),
    )
    # The version names the parameters: the same weights always get the same version.
    digest = hashlib.sha256(json.dumps(model.to_dict(), sort_keys=True).encode()).hexdigest()
    return replace(
        model,
        version=f"fraud-lr-{digest[:10]}",
        about={
            "kind": "logistic regression (L2, Newton/IRLS) on standardized inputs",
            "training": training,
            "data_version": data,
        },
    )


def _rounded(values: Matrix) -> tuple[float, ...]:
    """Ten decimals: far below any effect on a score, and the file diffs stay readable."""
    return tuple(round(float(v), 10) for v in values)


def from_reports(
    timed: Sequence[tuple[float, str, dict[str, Any]]], labels: Sequence[FeedbackLabel]
) -> Iterator[dict[str, Any] | FeedbackLabel]:
    """The transactions (time order), each preceded by the labels reported by its time,
    as the fraud service received them."""
    reports = sorted(labels, key=lambda lb: lb.reported_at)
    at = 0
    for ts, _, tx in timed:
        while at < len(reports) and reports[at].reported_at <= ts:
            yield reports[at]
            at += 1
        yield tx


def train_on_received(
    transactions: Sequence[dict[str, Any]],
    labels: Sequence[FeedbackLabel],
    cfg: ScoringConfig | None = None,
    source: str = "lake",
) -> Model:
    """A model fitted on transactions as received (the raw lake) and the labels received.

    The target is what the labels say in the end (a transaction with a fraud label is
    fraud, every other one legitimate: confirmed legitimate or never reported); the inputs
    see only the labels reported by each transaction's time, as the service does. ValueError
    when the data cannot train a model (no fraud, or no legitimate payment).
    """
    cfg = cfg or ScoringConfig()
    fraud = {lb.transaction_id for lb in labels if lb.is_fraud}
    parsed = sorted(
        ((Tx.parse(tx).ts, n, tx) for n, tx in enumerate(transactions)), key=lambda k: k[:2]
    )
    timed = [(ts, str(tx["transaction_id"]), tx) for ts, _, tx in parsed]
    y = np.array([float(tx_id in fraud) for _, tx_id, _ in timed])
    if not 0 < y.sum() < len(y):
        raise ValueError(
            f"{source}: {len(y)} transactions, {int(y.sum())} of them confirmed fraud: "
            "a model needs both fraud and legitimate payments"
        )
    x = inputs_of(from_reports(timed, labels), cfg)
    training = {
        "source": source,
        "transactions": len(y),
        "frauds": int(y.sum()),
        "labels": len(labels),
        "l2": L2,
    }
    return fitted_model(x, y, training, f"{source} (as received)")
