"""The Azure Resource Manager endpoint for Cognitive Services deployments, faked.

`PUT|GET|DELETE /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/
accounts/{account}/deployments/{name}?api-version=...` and the list without `{name}`.

What it checks, like ARM: `api-version` (ARM's own versions, not the data plane's), a bearer
token for the management audience (a Cognitive Services token is refused with
InvalidAuthenticationTokenAudience; a token in `forbidden_tokens` lacks the "Cognitive Services
Contributor" role: 403 AuthorizationFailed), that subscription, resource group and account exist,
and the body (sku name and capacity, model format OpenAI, a known model with a version). A PUT
answers 201 `Creating`; each GET advances provisioning, and after `deploy_polls` GETs the state
is `Succeeded` (or `Failed` if scripted) and the chat data plane serves the deployment name with
the fine-tuned model, as Azure does. `quota_exceeded` answers the next PUT with InsufficientQuota.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import AccessToken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .openai_finetune import FINE_TUNABLE
from .openai_server import FakeState, error_response

ARM_SCOPE = "https://management.azure.com/.default"
ARM_TOKEN = "fake-arm-token-0123456789"
ARM_API_VERSIONS = frozenset({"2023-05-01", "2024-10-01", "2025-06-01"})
SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RESOURCE_GROUP = "rg-travel"
ACCOUNT = "aoai-travel"
_PROVIDER = "providers/Microsoft.CognitiveServices/accounts"


@dataclass
class ArmDeployment:
    name: str
    sku: dict[str, Any]
    model: dict[str, Any]
    state: str = "Creating"
    polls: int = 0
    fail: bool = False

    def public(self, sub: str, rg: str, account: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{sub}/resourceGroups/{rg}/{_PROVIDER}/{account}"
                  f"/deployments/{self.name}",
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "name": self.name, "sku": self.sku,
            "properties": {"model": self.model, "provisioningState": self.state,
                           "versionUpgradeOption": "NoAutoUpgrade",
                           "capabilities": {"chatCompletion": "true"}},
            "systemData": {"createdAt": "2024-11-01T00:00:00Z", "createdByType": "User"},
        }


@dataclass
class ArmState:
    subscription: str = SUBSCRIPTION
    resource_group: str = RESOURCE_GROUP
    account: str = ACCOUNT
    tokens: set[str] = field(default_factory=lambda: {ARM_TOKEN})
    forbidden_tokens: set[str] = field(default_factory=set)
    deploy_polls: int = 1
    fail_next_deployment: bool = False
    quota_exceeded: bool = False
    throttle: int = 0  # the next N requests answer 429
    deployments: dict[str, ArmDeployment] = field(default_factory=dict)


class ScopedCredential:
    """An AsyncTokenCredential whose token depends on the scope, as Entra's do: ARM and
    Cognitive Services tokens have different audiences and each service refuses the other's."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.tokens.get(scopes[0], "token-for-unknown-audience"),
                           int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> ScopedCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _check(state: FakeState, request: Request, headers: dict[str, str]) -> Response | None:
    arm: ArmState = state.arm
    version = request.query_params.get("api-version")
    if not version:
        return error_response(400, "MissingApiVersionParameter",
                              "The api-version query parameter (?api-version=) is required for"
                              " all requests.")
    if version not in ARM_API_VERSIONS:
        return error_response(400, "NoRegisteredProviderFound",
                              f"No registered resource provider found for location 'swedencentral'"
                              f" and API version '{version}' for type 'accounts/deployments'."
                              f" The supported api-versions are"
                              f" '{', '.join(sorted(ARM_API_VERSIONS))}'.")
    auth = headers.get("authorization", "")
    if not auth.startswith("Bearer "):
        return error_response(401, "AuthenticationFailed",
                              "Authentication failed. The 'Authorization' header is missing.")
    token = auth[len("Bearer "):]
    if token in state.tokens or token == state.api_key:
        return error_response(401, "InvalidAuthenticationTokenAudience",
                              "The access token has been obtained for wrong audience or resource"
                              " 'https://cognitiveservices.azure.com'. It should exactly match"
                              " with one of the allowed audiences 'https://management.azure.com/'.")
    if token not in arm.tokens | arm.forbidden_tokens:
        return error_response(401, "InvalidAuthenticationToken",
                              "The access token is invalid.")
    p = request.path_params
    scope = f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}/{_PROVIDER}/{p['account']}"
    if token in arm.forbidden_tokens:
        verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}[request.method]
        return error_response(
            403, "AuthorizationFailed",
            "The client 'travel-admin' with object id '00000000-0000-0000-0000-000000000001'"
            " does not have authorization to perform action"
            f" 'Microsoft.CognitiveServices/accounts/deployments/{verb}' over scope"
            f" '{scope}/deployments/{p.get('name', '')}' or the scope is invalid. If access was"
            " recently granted, please refresh your credentials.")
    if arm.throttle > 0:
        arm.throttle -= 1
        return error_response(429, "TooManyRequests", "The request is being throttled.",
                              headers={"Retry-After": "1"})
    if p["sub"] != arm.subscription:
        return error_response(404, "SubscriptionNotFound",
                              f"The subscription '{p['sub']}' could not be found.")
    if p["rg"] != arm.resource_group:
        return error_response(404, "ResourceGroupNotFound",
                              f"Resource group '{p['rg']}' could not be found.")
    if p["account"] != arm.account:
        return error_response(404, "ResourceNotFound",
                              f"The Resource 'Microsoft.CognitiveServices/accounts/{p['account']}'"
                              f" under resource group '{p['rg']}' was not found. For more"
                              " details please go to https://aka.ms/ARMResourceNotFoundFix")
    return None


def _validate_body(state: FakeState, body: Any) -> Response | None:
    if not isinstance(body, dict):
        return error_response(400, "InvalidRequestContent", "The request content was invalid.")
    sku, model = body.get("sku") or {}, (body.get("properties") or {}).get("model") or {}
    if not isinstance(sku.get("name"), str) or not isinstance(sku.get("capacity"), int) \
            or sku["capacity"] < 1:
        return error_response(400, "InvalidResourceProperties",
                              "The specified SKU is invalid: name and a capacity >= 1 are"
                              " required.")
    if model.get("format") != "OpenAI" or not model.get("version"):
        return error_response(400, "InvalidResourceProperties",
                              "The model format must be 'OpenAI' and a version is required.")
    known = FINE_TUNABLE | set(state.finetune.fine_tuned_models())
    if model.get("name") not in known:
        return error_response(400, "DeploymentModelNotSupported",
                              f"The model '{model.get('name')}' of format 'OpenAI' and version"
                              f" '{model.get('version')}' is not supported.")
    return None


def arm_routes(state: FakeState) -> list[Route]:
    base = "/subscriptions/{sub}/resourceGroups/{rg}/" + _PROVIDER + "/{account}/deployments"

    async def one(request: Request) -> Response:
        rec = await state.capture(request, "arm", request.path_params["name"])
        p = request.path_params
        with state.lock:
            if bad := _check(state, request, rec.headers):
                return bad
            arm: ArmState = state.arm
            name = p["name"]
            dep = arm.deployments.get(name)
            if request.method == "DELETE":
                if dep is None:
                    return Response(status_code=204)
                del arm.deployments[name]
                state.deployments.pop(name, None)
                return Response(status_code=200)
            if request.method == "GET":
                if dep is None:
                    return error_response(404, "DeploymentNotFound",
                                          f"Deployment '{name}' not found.")
                if dep.state == "Creating":
                    dep.polls += 1
                    if dep.polls >= arm.deploy_polls:
                        dep.state = "Failed" if dep.fail else "Succeeded"
                        if not dep.fail:
                            state.deployments[name] = str(dep.model["name"])
                return JSONResponse(dep.public(p["sub"], p["rg"], p["account"]))
            if bad := _validate_body(state, rec.json):
                return bad
            if arm.quota_exceeded:
                arm.quota_exceeded = False
                return error_response(
                    400, "InsufficientQuota",
                    f"This operation require {rec.json['sku']['capacity']} new capacity in quota"
                    " Tokens Per Minute (thousands) - gpt-4o-mini - finetune, which is bigger"
                    " than the current available capacity 0. The current quota usage is 50 and"
                    " the quota limit is 50 for quota Tokens Per Minute (thousands).")
            dep = ArmDeployment(name, rec.json["sku"], rec.json["properties"]["model"],
                                fail=arm.fail_next_deployment)
            arm.fail_next_deployment = False
            created = name not in arm.deployments
            arm.deployments[name] = dep
            return JSONResponse(dep.public(p["sub"], p["rg"], p["account"]),
                                201 if created else 200)

    async def listing(request: Request) -> Response:
        rec = await state.capture(request, "arm")
        p = request.path_params
        with state.lock:
            if bad := _check(state, request, rec.headers):
                return bad
            arm: ArmState = state.arm
            return JSONResponse({"value": [d.public(p["sub"], p["rg"], p["account"])
                                           for d in arm.deployments.values()]})

    return [Route(base, listing, methods=["GET"]),
            Route(base + "/{name}", one, methods=["GET", "PUT", "DELETE"])]
