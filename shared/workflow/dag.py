"""The DAG of a workflow's steps: order, cycles, ancestors, successors. Pure functions."""

from collections.abc import Mapping, Sequence


def cycles(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every cycle among known steps, each as the steps in it in order (a, b, a)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in needs.get(node, ()):
            if dep not in needs:
                continue
            if state.get(dep) == 1:
                found.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in needs:
        if node not in state:
            visit(node)
    return found


def ancestors(needs: Mapping[str, Sequence[str]], step: str) -> set[str]:
    """Every step `step` depends on, directly or not."""
    seen: set[str] = set()
    stack = list(needs.get(step, ()))
    while stack:
        dep = stack.pop()
        if dep in seen or dep not in needs:
            continue
        seen.add(dep)
        stack.extend(needs[dep])
    return seen


def successors(needs: Mapping[str, Sequence[str]], step: str) -> list[str]:
    """The steps that need `step` directly, in workflow order."""
    return [other for other, deps in needs.items() if step in deps]


def roots(needs: Mapping[str, Sequence[str]]) -> list[str]:
    return [step for step, deps in needs.items() if not deps]


def sinks(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """The steps nothing needs."""
    needed = {dep for deps in needs.values() for dep in deps}
    return [step for step in needs if step not in needed]


def descendants(needs: Mapping[str, Sequence[str]], step: str) -> set[str]:
    """Every step that depends on `step`, directly or not."""
    seen: set[str] = set()
    stack = successors(needs, step)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(successors(needs, node))
    return seen


def order(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """The steps so that each comes after its needs, otherwise in the order given (ties by
    that order); what a cycle holds back comes last, as given (the validator refuses
    cycles)."""
    placed: list[str] = []
    pending = list(needs)
    while pending:
        ready = next(
            (s for s in pending if all(n in placed or n not in needs for n in needs[s])), None
        )
        if ready is None:
            return placed + pending
        placed.append(ready)
        pending.remove(ready)
    return placed
