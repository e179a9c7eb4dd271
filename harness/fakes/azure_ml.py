"""A fake Azure AI Foundry project at the seam of the few azure-ai-ml MLClient operations the
Foundry trainer calls (admin/training/foundry_client.make_clients returns these clients).

Faking HTTP under the real MLClient proved impractical: registering a local file as a data
asset alone goes through the workspace, its default datastore, SAS credentials and
azure-storage-blob uploads. So the seam is the operation groups, and their requests and
responses are azure-ai-ml's own objects:
- requests are serialised with the entities' real `_to_rest_object()` (what the SDK would PUT):
  `create_finetuning_job` -> CustomModelFineTuningJob (azure/ai/ml/finetuning/_create_job.py),
  ServerlessEndpoint and MarketplaceSubscription
  (azure/ai/ml/entities/_autogen_entities/models/_patch.py);
- responses are built the way the operations build theirs: `Job._from_rest_object`
  (azure/ai/ml/operations/_job_operations.py: get/create_or_update), wire JSON through the
  arm_ml_service models into `ServerlessEndpoint._from_rest_object` /
  `MarketplaceSubscription._from_rest_object`
  (operations/_serverless_endpoint_operations.py, _marketplace_subscription_operations.py),
  run details from the runhistory models (operations/_run_operations.py get_run_details), and
  azure-core's ResourceNotFoundError for a missing asset or model (what a 404 raises).
A job moves one status per `jobs.get` along its script (Queued, Running, Completed by default),
and a created serverless endpoint is served by the fake chat server (harness/fakes/openai_server)
under its scoring URI.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError

from admin.training.foundry_client import Clients

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RESOURCE_GROUP = "rg-travel"
PROJECT = "travel-foundry"
LOCATION = "eastus2"
WORKSPACE_ID = "5f0c7a4e-0000-4000-8000-00000000f00d"
PHI = "Phi-4-mini-instruct"
PHI_REGIONS = "['eastus2', 'eastus', 'northcentralus', 'westus3', 'westus', 'southcentralus']"
AUTH_FAILURE = ("DefaultAzureCredential failed to retrieve a token from the included"
                " credentials.\nAttempted credentials:\n\tEnvironmentCredential: ...")


@dataclass
class Done:
    """What an LROPoller's result() gives back, already finished."""

    value: Any = None

    def result(self, timeout: float | None = None) -> Any:
        return self.value


@dataclass
class FakeProject:
    chat_endpoint: str  # where created serverless endpoints are served (fake chat server)
    serve: Any = None  # callable(model name): make the fake chat server serve that model
    location: str = LOCATION
    # registry name -> model name -> (version, tags)
    catalog: dict[str, dict[str, tuple[str, dict[str, str]]]] = field(default_factory=lambda: {
        "azureml": {PHI: ("7", {"maas-finetuning-deploy-regions": PHI_REGIONS})},
        "azureml-meta": {"Meta-Llama-3.1-8B-Instruct": ("4", {
            "maas-finetuning-deploy-regions": "['westus3']"})}})
    data: dict[tuple[str, str], Any] = field(default_factory=dict)
    uploads: list[tuple[str, str, bytes]] = field(default_factory=list)  # name, version, bytes
    jobs: dict[str, Any] = field(default_factory=dict)
    job_requests: dict[str, Any] = field(default_factory=dict)  # name -> REST body sent
    scripts: dict[str, list[str]] = field(default_factory=dict)
    script: list[str] = field(default_factory=lambda: ["Queued", "Running", "Completed"])
    failure: tuple[str, str] = ("UserError", "Training data has 2 examples; at least 10 needed")
    models: dict[str, Any] = field(default_factory=dict)  # fine-tuned models in the project
    subscriptions: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)
    endpoint_requests: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    deny: bool = False  # every call fails as DefaultAzureCredential does without a login

    def clients(self, registry: str) -> Clients:
        return Clients(_Workspace(self), _Registry(self, registry))

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.deny:
            raise ClientAuthenticationError(AUTH_FAILURE)

    def arm_id(self, kind: str, name: str) -> str:
        return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{PROJECT}/{kind}/{name}")


class _Ops:
    def __init__(self, project: FakeProject) -> None:
        self.p = project


class _DataOps(_Ops):
    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.p._call("data.get")
        try:
            return self.p.data[(name, str(version))]
        except KeyError:
            raise ResourceNotFoundError(f"Data asset {name}:{version} not found") from None

    def create_or_update(self, data: Any) -> Any:
        from azure.ai.ml.entities import Data

        self.p._call("data.create_or_update")
        assert data.type == "uri_file", data.type
        content = Path(data.path).read_bytes()  # the SDK uploads this local file
        self.p.uploads.append((data.name, data.version, content))
        created = Data(name=data.name, version=data.version, type=data.type,
                       description=data.description, tags=dict(data.tags or {}),
                       path=f"azureml://datastores/workspaceblobstore/paths/LocalUpload/"
                            f"{uuid.uuid4().hex}/{Path(data.path).name}",
                       id=self.p.arm_id("data", f"{data.name}/versions/{data.version}"))
        self.p.data[(data.name, data.version)] = created
        return created


class _RegistryModels(_Ops):
    def __init__(self, project: FakeProject, registry: str) -> None:
        super().__init__(project)
        self.registry = registry

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        from azure.ai.ml.entities import Model

        self.p._call("registry.models.get")
        found = self.p.catalog.get(self.registry, {}).get(name)
        if found is None or (version is not None and version != found[0]):
            raise ResourceNotFoundError(f"Model {name} not found in registry {self.registry}")
        return Model(name=name, version=found[0], tags=dict(found[1]), type="mlflow_model",
                     id=f"azureml://registries/{self.registry}/models/{name}/versions/{found[0]}")


class _WorkspaceModels(_Ops):
    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.p._call("models.get")
        try:
            return self.p.models[name]
        except KeyError:
            raise ResourceNotFoundError(f"Model {name} not found") from None


class _RunDetails:
    def __init__(self, project: FakeProject) -> None:
        self.p = project

    def get_run_details(self, run_id: str) -> Any:
        from azure.ai.ml._restclient.runhistory.models import RootError, RunDetails
        from azure.ai.ml._restclient.runhistory.models._models_py3 import ErrorResponse

        code, message = self.p.failure
        return RunDetails(run_id=run_id, status=self.p.jobs[run_id].status,
                          error=ErrorResponse(error=RootError(code=code, message=message)))


class _JobOps(_Ops):
    def __init__(self, project: FakeProject) -> None:
        super().__init__(project)
        self._runs_operations = _RunDetails(project)

    def _with_status(self, name: str, status: str) -> Any:
        from azure.ai.ml.entities import Job

        rest = self.p.job_requests[name]
        rest.properties.status = status
        return Job._from_rest_object(rest)

    def create_or_update(self, job: Any) -> Any:
        self.p._call("jobs.create_or_update")
        rest = job._to_rest_object()  # what the SDK PUTs: fails on a malformed job
        rest.name = job.name
        rest.id = self.p.arm_id("jobs", job.name)
        self.p.job_requests[job.name] = rest
        self.p.scripts[job.name] = list(self.p.script)
        created = self._with_status(job.name, "NotStarted")
        self.p.jobs[job.name] = created
        return created

    def get(self, name: str) -> Any:
        from azure.ai.ml.entities import Model

        self.p._call("jobs.get")
        if name not in self.p.jobs:
            raise ResourceNotFoundError(f"Job {name} not found")
        script = self.p.scripts[name]
        status = script.pop(0) if len(script) > 1 else script[0]
        job = self.p.jobs[name] = self._with_status(name, status)
        if status == "Completed":
            out = job.outputs["registered_model"].name
            self.p.models.setdefault(out, Model(name=out, version="1", type="mlflow_model"))
        return job

    def begin_cancel(self, name: str) -> Done:
        self.p._call("jobs.begin_cancel")
        self.p.scripts[name] = ["CancelRequested", "Canceled"]
        return Done()


class _Subscriptions(_Ops):
    def begin_create_or_update(self, sub: Any) -> Done:
        from azure.ai.ml._restclient.arm_ml_service.models import (
            MarketplaceSubscription as Rest,
        )
        from azure.ai.ml.entities import MarketplaceSubscription

        self.p._call("marketplace_subscriptions.begin_create_or_update")
        request = sub._to_rest_object().as_dict()
        publisher = sub.model_id.split("/")[3].removeprefix("azureml-")
        response = Rest({"name": sub.name, "id": self.p.arm_id("marketplaceSubscriptions",
                                                              sub.name),
                         "properties": {**request["properties"], "marketplacePlan": {
                             "publisherId": publisher, "offerId": "offer", "planId": "plan"},
                             "marketplaceSubscriptionStatus": "Subscribed",
                             "provisioningState": "Succeeded"}})
        done = MarketplaceSubscription._from_rest_object(response)
        self.p.subscriptions[sub.name] = done
        return Done(done)


class _Endpoints(_Ops):
    def begin_create_or_update(self, endpoint: Any) -> Done:
        from azure.ai.ml._restclient.arm_ml_service.models import ServerlessEndpoint as Rest
        from azure.ai.ml.entities import ServerlessEndpoint

        self.p._call("serverless_endpoints.begin_create_or_update")
        request = endpoint._to_rest_object().as_dict()
        self.p.endpoint_requests[endpoint.name] = request
        response = Rest({
            "name": endpoint.name, "id": self.p.arm_id("serverlessEndpoints", endpoint.name),
            "location": self.p.location, "tags": request.get("tags") or {},
            "sku": request.get("sku"),
            "properties": {**request["properties"], "authMode": "Key",
                           "inferenceEndpoint": {"uri": self.p.chat_endpoint, "headers": {}},
                           "provisioningState": "Succeeded", "endpointState": "Online"}})
        created = ServerlessEndpoint._from_rest_object(response)
        self.p.endpoints[endpoint.name] = created
        self.p.keys[endpoint.name] = uuid.uuid4().hex
        model_name = str(created.model_id).split("/models/")[1].split("/")[0]
        if self.p.serve is not None:
            self.p.serve(model_name)
        return Done(created)

    def get(self, name: str) -> Any:
        self.p._call("serverless_endpoints.get")
        try:
            return self.p.endpoints[name]
        except KeyError:
            raise ResourceNotFoundError(f"Serverless endpoint {name} not found") from None

    def list(self) -> list[Any]:
        self.p._call("serverless_endpoints.list")
        return list(self.p.endpoints.values())

    def begin_delete(self, name: str) -> Done:
        self.p._call("serverless_endpoints.begin_delete")
        self.p.endpoints.pop(name)
        return Done()


class _Workspaces(_Ops):
    def get(self, name: str) -> Any:
        from azure.ai.ml.entities import Workspace

        self.p._call("workspaces.get")
        assert name == PROJECT, name
        return Workspace(name=name, location=self.p.location, workspace_id=WORKSPACE_ID)


class _Workspace:
    def __init__(self, project: FakeProject) -> None:
        self.data = _DataOps(project)
        self.models = _WorkspaceModels(project)
        self.jobs = _JobOps(project)
        self.marketplace_subscriptions = _Subscriptions(project)
        self.serverless_endpoints = _Endpoints(project)
        self.workspaces = _Workspaces(project)


class _Registry:
    def __init__(self, project: FakeProject, registry: str) -> None:
        self.models = _RegistryModels(project, registry)
