"""Reading the services' HTTP APIs: one pooled client, errors that say which service."""

from typing import Any

import httpx
from fastapi import HTTPException

from services.console.settings import ConsoleSettings


class Upstream:
    def __init__(self, settings: ConsoleSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client

    def url(self, service: str) -> str:
        url = self.settings.service_url(service)
        if url is None:
            raise HTTPException(503, f"CHOREO_{service.upper()}_URL is not set")
        return url

    async def response(
        self, service: str, path: str, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        """GET `path` of a service; its 4xx answers pass through, failures are a 502."""
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            answer = await self.client.get(f"{self.url(service)}{path}", params=query)
        except httpx.HTTPError as exc:
            raise HTTPException(
                502, f"the {service} service did not answer ({type(exc).__name__})"
            ) from exc
        if answer.status_code >= 400:
            raise HTTPException(
                answer.status_code if answer.status_code < 500 else 502,
                f"{service}: {_detail(answer)}",
            )
        return answer

    async def get(self, service: str, path: str, params: dict[str, Any] | None = None) -> Any:
        return (await self.response(service, path, params)).json()

    async def find(self, service: str, path: str) -> Any:
        """Like get, but None when the service answers 404."""
        try:
            return await self.get(service, path)
        except HTTPException as exc:
            if exc.status_code == 404:
                return None
            raise


def _detail(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail else f"HTTP {answer.status_code}"
