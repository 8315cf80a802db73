"""`python -m services.transform`: serve the transform service."""

from services.transform.app import create_app
from shared.service import run

run(create_app)
