"""`python -m services.store`: serve the store service."""

from services.store.app import create_app
from shared.service import run

run(create_app)
