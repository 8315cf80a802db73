"""`python -m services.fraud`: serve the fraud service."""

from services.fraud.app import create_app
from shared.service import run

run(create_app)
