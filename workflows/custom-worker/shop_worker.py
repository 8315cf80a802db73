"""A Python worker with two step kinds of its own, `shop.price` and `shop.invoice`.

Run it next to the stack (from this folder, once per replica):

    choreo worker shop_worker:worker
"""

import json

from pydantic import BaseModel, ConfigDict, Field

from choreo.sdk import Context, StepFailed, Worker

worker = Worker("shop", description="Prices order lines and writes invoices.")

PRICES = {"apples": 0.5, "pears": 0.75, "plums": 1.2}  # per item


class PriceWith(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str = Field(description=f"one of {', '.join(PRICES)}")
    quantity: int = Field(ge=0)


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str
    quantity: int
    total: float


@worker.step("shop.price", example={"item": "apples", "quantity": 4})
async def price(ctx: Context, params: PriceWith) -> Line:
    """Price one order line."""
    if params.item not in PRICES:
        # StepFailed fails the step at once; any other exception is retried by its policy.
        raise StepFailed(f"no price for {params.item!r}; known: {', '.join(PRICES)}")
    total = round(PRICES[params.item] * params.quantity, 2)
    ctx.log.info("priced", item=params.item, quantity=params.quantity, total=total)
    return Line(item=params.item, quantity=params.quantity, total=total)


class InvoiceWith(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order: str = Field(description="the order's id")
    lines: list[Line]


class Invoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order: str
    total: float
    uri: str = Field(description="the invoice, as JSON in the curated layer")


@worker.step("shop.invoice")
async def invoice(ctx: Context, params: InvoiceWith) -> Invoice:
    """Add up the priced lines and write the invoice to the lake."""
    total = round(sum(line.total for line in params.lines), 2)
    body = {"order": params.order, "lines": [line.model_dump() for line in params.lines]}
    assert ctx.lake is not None
    # The key is the run's and the step's: a retried attempt rewrites the same object.
    uri = await ctx.lake.write(
        f"invoices/{params.order}/{ctx.runid}.json",
        json.dumps({**body, "total": total}, indent=2).encode(),
        layer="curated",
        content_type="application/json",
    )
    ctx.progress("invoice written", 1.0)
    return Invoice(order=params.order, total=total, uri=uri)
