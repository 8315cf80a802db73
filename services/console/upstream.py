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
        self,
        service: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        method: str = "GET",
        body: Any = None,
    ) -> httpx.Response:
        """A request to a service (GET unless said); its 4xx answers pass through with
        their message, failures are a 502 naming the service."""
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        headers = {}
        key = self.settings.console_ingest_api_key
        if service == "ingest" and key is not None:
            headers["X-API-Key"] = key.get_secret_value()
        try:
            answer = await self.client.request(
                method, f"{self.url(service)}{path}", params=query, json=body, headers=headers
            )
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

    async def post(self, service: str, path: str, body: Any = None, **params: Any) -> Any:
        answer = await self.response(service, path, params, method="POST", body=body)
        return answer.json() if answer.content else None

    async def delete(self, service: str, path: str, **params: Any) -> Any:
        return (await self.response(service, path, params, method="DELETE")).json()

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
