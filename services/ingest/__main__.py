"""`python -m services.ingest`: serve the ingest service."""

from services.ingest.app import create_app
from shared.service import run

run(create_app)
