"""Azure Resource Manager calls for model deployments on an Azure OpenAI resource.

Deploying a model is a control-plane operation: it goes to ARM (not to the resource's endpoint),
needs an Entra token for the management audience and the "Cognitive Services Contributor" role,
and an api-key cannot do it. The deployment is created with PUT, then provisioned asynchronously:
we poll GET until `provisioningState` is `Succeeded` (or `Failed`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx

from admin.training.base import TrainingError
from chatapp.providers._openai_stream import safe_message
from chatapp.providers.azure_auth import is_loopback_http
from chatapp.settings import ConfigError, Settings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

ARM_SCOPE = "https://management.azure.com/.default"
ARM_API_VERSION = "2024-10-01"
ARM_ROLE = "Cognitive Services Contributor"
# ARM's rule for deployment names; checked here so a typo fails before any call.
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$")
_SETTING_FOR_404 = {
    "SubscriptionNotFound": "TRAVEL_AZURE_SUBSCRIPTION_ID",
    "ResourceGroupNotFound": "TRAVEL_AZURE_RESOURCE_GROUP",
    "ResourceNotFound": "TRAVEL_AZURE_ACCOUNT_NAME",
}

Sleep = Callable[[float], Awaitable[None]]


def _body_error(response: httpx.Response) -> tuple[str, str]:
    try:
        err = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", response.text[:200]
    return str(err.get("code") or ""), str(err.get("message") or "")


class ArmDeployments:
    """Deployments of one Azure OpenAI account, from the TRAVEL_AZURE_* settings."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential, *,
                 poll_s: float = 10.0, max_wait_s: float = 3600.0,
                 sleep: Sleep = asyncio.sleep) -> None:
        missing = [env for env, value in (
            ("TRAVEL_AZURE_SUBSCRIPTION_ID", settings.azure_subscription_id),
            ("TRAVEL_AZURE_RESOURCE_GROUP", settings.azure_resource_group),
            ("TRAVEL_AZURE_ACCOUNT_NAME", settings.azure_account_name)) if not value]
        if missing:
            raise ConfigError(f"deploying on Azure needs {', '.join(missing)} (the Azure OpenAI"
                              " resource's subscription, resource group and name)")
        arm = settings.azure_arm_endpoint.rstrip("/")
        if arm.startswith("http://") and not is_loopback_http(arm):
            # A management token over plain http would be readable on the network.
            raise ConfigError(f"TRAVEL_AZURE_ARM_ENDPOINT must be https (got {arm})")
        self.account = str(settings.azure_account_name)
        self.resource_group = str(settings.azure_resource_group)
        self.sku = settings.azure_deployment_sku
        self.capacity = settings.azure_deployment_capacity
        self.base = (f"{arm}/subscriptions/{settings.azure_subscription_id}/resourceGroups/"
                     f"{self.resource_group}/providers/Microsoft.CognitiveServices/accounts/"
                     f"{self.account}/deployments")
        self._credential = credential
        self._poll_s, self._max_wait_s, self._sleep = poll_s, max_wait_s, sleep
        self._http = httpx.AsyncClient(timeout=60.0)
        self._token: str | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- requests ---------------------------------------------------------------------------

    async def _request(self, method: str, name: str | None, doing: str,
                       body: dict[str, Any] | None = None) -> httpx.Response:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            token = (await self._credential.get_token(ARM_SCOPE)).token
        except ClientAuthenticationError as err:
            # DefaultAzureCredential explains itself over many lines: keep the first.
            first = (str(err).strip().splitlines() or ["no credential found"])[0]
            raise TrainingError(f"{doing}: could not get an Entra ID token for Azure Resource"
                                " Manager (deploying needs Entra ID even with an api-key: run"
                                f" `az login`): {safe_message(first, [])}") from None
        self._token = token
        url = self.base + (f"/{name}" if name else "")
        try:
            response = await self._http.request(
                method, url, params={"api-version": ARM_API_VERSION}, json=body,
                headers={"Authorization": f"Bearer {token}"})
        except httpx.TimeoutException:
            raise TrainingError(f"{doing}: Azure Resource Manager did not answer in time") \
                from None
        except httpx.HTTPError as err:
            raise TrainingError(f"{doing}: cannot reach Azure Resource Manager at"
                                f" {self.base.split('/subscriptions/')[0]}"
                                f" (TRAVEL_AZURE_ARM_ENDPOINT): {type(err).__name__}") from None
        return response

    def error(self, response: httpx.Response, doing: str) -> TrainingError:
        """One line a user can act on, for any failed ARM answer."""
        code, raw = _body_error(response)
        # The service's own words are bounded and scrubbed; our advice after them is kept.
        message = safe_message(raw, [self._token or ""])
        status = response.status_code
        where = f"account {self.account!r} (resource group {self.resource_group!r})"
        if status == 401:
            text = (f"HTTP 401 {code}: Azure Resource Manager refused the Entra token"
                    " (run `az login`, or check the service principal and its tenant)")
        elif status == 403:
            text = (f"HTTP 403 {code}: the signed-in identity lacks the role '{ARM_ROLE}' on"
                    f" {where}; add it under Access control (IAM) and retry")
        elif status == 404 and code in _SETTING_FOR_404:
            text = f"HTTP 404 {code}: {message} (check {_SETTING_FOR_404[code]})"
        elif "quota" in (code + message).lower():
            text = (f"quota exceeded ({code}): {message} (lower TRAVEL_AZURE_DEPLOYMENT_CAPACITY,"
                    " delete unused deployments with `travel-admin cleanup`, or request quota)")
        elif status == 429:
            wait = response.headers.get("Retry-After", "a few")
            text = f"HTTP 429 {code}: Azure Resource Manager is throttling; retry in {wait} s"
        else:
            text = f"HTTP {status} {code}: {message}"
        return TrainingError(f"{doing}: {text}")

    # -- operations -------------------------------------------------------------------------

    async def get(self, name: str) -> dict[str, Any] | None:
        doing = f"reading Azure deployment {name!r} on {self.account}"
        response = await self._request("GET", name, doing)
        if response.status_code == 404 and _body_error(response)[0] == "DeploymentNotFound":
            return None
        if response.status_code != 200:
            raise self.error(response, doing)
        return dict(response.json())

    async def list_all(self) -> list[dict[str, Any]]:
        doing = f"listing Azure deployments of {self.account}"
        response = await self._request("GET", None, doing)
        if response.status_code != 200:
            raise self.error(response, doing)
        return list(response.json().get("value") or [])

    async def delete(self, name: str) -> None:
        doing = f"deleting Azure deployment {name!r} on {self.account}"
        response = await self._request("DELETE", name, doing)
        if response.status_code not in (200, 202, 204):
            raise self.error(response, doing)

    async def create(self, name: str, model: str) -> dict[str, Any]:
        """PUT the deployment and wait until it is provisioned; resume one already started."""
        if not DEPLOYMENT_NAME.match(name):
            raise TrainingError(f"deployment name {name!r}: use 2-64 letters, digits, '.', '_'"
                                " or '-', starting with a letter or digit")
        doing = f"deploying {model} as {name!r} on {self.account}"
        existing = await self.get(name)
        if existing is not None:
            current = existing.get("properties", {}).get("model", {}).get("name")
            if current != model:
                # PUT would silently swap the model under a live name: refuse.
                raise TrainingError(f"{doing}: Azure deployment {name!r} already exists with"
                                    f" model {current}; choose a new --name")
        else:
            body = {"sku": {"name": self.sku, "capacity": self.capacity},
                    "properties": {"model": {"format": "OpenAI", "name": model,
                                             "version": "1"}}}
            response = await self._request("PUT", name, doing, body)
            if response.status_code not in (200, 201):
                raise self.error(response, doing)
            existing = dict(response.json())
        return await self._wait(name, existing, doing)

    async def _wait(self, name: str, resource: dict[str, Any], doing: str) -> dict[str, Any]:
        deadline = time.monotonic() + self._max_wait_s
        delay = min(0.2, self._poll_s)
        while True:
            state = str(resource.get("properties", {}).get("provisioningState", ""))
            if state == "Succeeded":
                return resource
            if state in ("Failed", "Canceled"):
                raise TrainingError(f"{doing}: provisioning ended {state}; see the Activity log"
                                    f" of {self.account} in the Azure portal for the reason")
            if time.monotonic() > deadline:
                raise TrainingError(f"{doing}: still {state or 'provisioning'} after"
                                    f" {self._max_wait_s:.0f} s; run the same deploy again"
                                    " later to resume waiting")
            await self._sleep(delay)
            delay = min(delay * 2, self._poll_s)
            got = await self.get(name)
            if got is None:
                raise TrainingError(f"{doing}: the deployment disappeared while provisioning")
            resource = got
