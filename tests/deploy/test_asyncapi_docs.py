"""docs/asyncapi/ is what the code declares (regenerate: python deploy/asyncapi.py)."""

from deploy.asyncapi import main


def test_asyncapi_documents_are_current() -> None:
    assert main(["--check"]) == 0
