"""`taking_turns`: long work over many items lets the event loop run its other work."""

import asyncio

from shared.turns import taking_turns


async def test_other_work_runs_between_turns_and_every_item_comes_in_order() -> None:
    ticks = 0
    seen_at_tick: list[int] = []
    stop = asyncio.Event()

    async def other_work() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(other_work())
    await asyncio.sleep(0)  # the other task is running
    items = []
    async for item in taking_turns(range(1_000), turn=200):
        items.append(item)
        seen_at_tick.append(ticks)
    stop.set()
    await ticking

    assert items == list(range(1_000))
    # Within a turn nothing else runs; between two turns the other task does.
    assert len(set(seen_at_tick[:200])) == 1
    assert len(set(seen_at_tick)) == 5
    assert seen_at_tick[0] < seen_at_tick[200] < seen_at_tick[400] < seen_at_tick[999]
