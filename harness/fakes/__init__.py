"""Test doubles that sit at the product's seams (HTTP services, credentials), never inside it.

Import the modules directly (`from harness.fakes.openai_server import FakeOpenAIServer`) so that
importing one fake does not pull in the others' dependencies.
"""
