"""`python -m tests.transform_with_test_kinds`: the transform service with the test step
kinds, as a process a test can kill."""

from services.transform.app import create_app
from shared.service import run
from tests.workflow_support import test_steps

if __name__ == "__main__":
    run(lambda: create_app(steps=test_steps()))
