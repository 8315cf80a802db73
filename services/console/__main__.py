"""`python -m services.console`: serve the web console."""

from services.console.app import create_app
from shared.service import run

run(create_app)
