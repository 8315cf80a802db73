"""`python -m services.audit`: serve the audit service."""

from services.audit.app import create_app
from shared.service import run

run(create_app)
