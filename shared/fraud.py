"""The data of `fraud.scored` and `fraud.alert` events: what the fraud service publishes
and what audit (or any other consumer) reads, in one model."""

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class FraudVerdict(BaseModel):
    """One transaction's verdict, with the transaction fields a reader needs beside it."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: str
    transaction_event_id: str  # the envelope id of the scored `transaction` event
    card_id: str
    terminal_id: str
    amount: float
    currency: str
    timestamp: AwareDatetime  # the transaction's own time
    score: float = Field(ge=0, le=1)
    decision: Literal["allow", "review", "block"]
    reasons: list[str]
    rules: dict[str, float]  # rule name -> its contribution, for the rules that fired
    model: str  # the version of the model that scored it
