"""azure-ai-ml plumbing for the Foundry trainer: the optional import, the two MLClients (the
project and the model-catalog registry), and failures turned into one-line TrainingErrors.

azure-ai-ml is the optional extra `foundry` and is imported only here and only when the backend
is used, so the chat and the other backends run without it. `make_clients` is the seam tests
replace (harness/fakes/azure_ml.py): everything the trainer asks Azure goes through the few
MLClient operations it returns.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from admin.training.base import TrainingError
from chatapp.providers._openai_stream import safe_message
from chatapp.settings import ConfigError, Settings

EXTRA_HINT = "install travel-chat[foundry] (pip install -e '.[foundry]')"
# What the signed-in identity needs on the project to fine-tune and deploy serverless models.
FOUNDRY_ROLE = "Azure AI Developer"


def require_azure_ai_ml() -> None:
    if importlib.util.find_spec("azure.ai.ml") is None:
        raise TrainingError(f"--backend foundry needs the azure-ai-ml package: {EXTRA_HINT}")
    # create_finetuning_job, ServerlessEndpoint and MarketplaceSubscription are "experimental"
    # in azure-ai-ml, which logs a warning line for each on every command: we pin the version
    # we test, so the note is only noise in the admin's terminal.
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Project:
    """Where jobs, data assets and serverless endpoints live, and the catalog to take models
    from."""

    subscription_id: str
    resource_group: str
    name: str
    registry: str


def project_settings(settings: Settings) -> Project:
    """The Foundry project from settings; a missing one names its TRAVEL_ variable."""
    subscription = settings.foundry_subscription_id or settings.azure_subscription_id
    missing = [var for var, value in (
        ("TRAVEL_FOUNDRY_SUBSCRIPTION_ID (or TRAVEL_AZURE_SUBSCRIPTION_ID)", subscription),
        ("TRAVEL_FOUNDRY_RESOURCE_GROUP", settings.foundry_resource_group),
        ("TRAVEL_FOUNDRY_PROJECT", settings.foundry_project)) if not value]
    if missing:
        raise ConfigError(f"--backend foundry needs {', '.join(missing)} (the Azure AI Foundry"
                          " project to fine-tune in)")
    assert subscription and settings.foundry_resource_group and settings.foundry_project
    return Project(subscription, settings.foundry_resource_group, settings.foundry_project,
                   settings.foundry_registry)


@dataclass
class Clients:
    workspace: Any  # azure.ai.ml.MLClient on the project
    registry: Any  # azure.ai.ml.MLClient on the catalog registry (registry_name=...)
    credential: Any = None  # closed with the trainer when we created it

    def close(self) -> None:
        close = getattr(self.credential, "close", None)
        if close is not None:
            close()


def make_clients(project: Project) -> Clients:
    """MLClients signed in with DefaultAzureCredential (managed identity, `az login`, or a
    service principal from AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET)."""
    require_azure_ai_ml()
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    workspace = MLClient(credential, subscription_id=project.subscription_id,
                         resource_group_name=project.resource_group, workspace_name=project.name)
    registry = MLClient(credential, registry_name=project.registry)
    return Clients(workspace, registry, credential)


def _first_line(err: BaseException) -> str:
    # azure-ai-ml and azure-identity explain themselves over many lines: keep the first.
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def service_message(err: BaseException) -> str:
    """The service's own error message (azure-core parsed `{"error": {"message": ...}}`)."""
    odata = getattr(err, "error", None)
    message = getattr(odata, "message", None)
    return safe_message(str(message) if message else _first_line(err), [])


def is_not_found(err: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    return isinstance(err, ResourceNotFoundError) or (
        isinstance(err, HttpResponseError) and err.status_code == 404)


@contextmanager
def mapped(doing: str, project: Project) -> Iterator[None]:
    """Turn azure-core, azure-identity and azure-ai-ml failures inside the block into one-line
    TrainingErrors that say what to do about them."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

    where = f"project {project.name!r} (resource group {project.resource_group})"
    try:
        yield
    except TrainingError:
        raise
    except ClientAuthenticationError as err:
        status = getattr(err, "status_code", None)
        if status in (401, 403):
            text = (f"HTTP {status}: Azure refused the signed-in identity on {where}; it needs"
                    f" the '{FOUNDRY_ROLE}' role there: {service_message(err)}")
        else:
            first = safe_message(_first_line(err), [])
            text = ("could not get an Entra ID token (run `az login`, or set AZURE_CLIENT_ID,"
                    f" AZURE_TENANT_ID and AZURE_CLIENT_SECRET): {first}")
        raise TrainingError(f"{doing}: {text}") from None
    except HttpResponseError as err:
        status = err.status_code
        if status in (401, 403):
            text = (f"HTTP {status}: the signed-in identity lacks the '{FOUNDRY_ROLE}' role on"
                    f" {where}: {service_message(err)}")
        elif status == 404:
            text = (f"HTTP 404: not found ({service_message(err)}); check TRAVEL_FOUNDRY_PROJECT"
                    " and TRAVEL_FOUNDRY_RESOURCE_GROUP")
        else:
            text = f"HTTP {status}: {service_message(err)}"
        raise TrainingError(f"{doing}: {text}") from None
    except AzureError as err:
        raise TrainingError(f"{doing}: {safe_message(_first_line(err), [])}") from None
    except Exception as err:
        # azure-ai-ml's own MlException/ValidationException: a bad entity or argument.
        from azure.ai.ml.exceptions import MlException

        if isinstance(err, MlException):
            raise TrainingError(f"{doing}: {safe_message(_first_line(err), [])}") from None
        raise


def regions_of(tag: str | None) -> list[str]:
    """The region names in a catalog tag such as `maas-finetuning-deploy-regions`, which the
    service writes as a list-like string ("['eastus2', 'westus3']" or "eastus2,westus3")."""
    return re.findall(r"[a-z0-9]+", (tag or "").lower())
