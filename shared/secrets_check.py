"""`python -m shared.secrets_check`: exit 1, naming them, when secrets in this process's
environment are placeholders (.env.example's `replace-me-*`, `changeme`, `minioadmin`...).

Docker Compose runs it once before NATS, MinIO, PostgreSQL and Grafana start, with every
secret of `.env`: the servers themselves would take any password they are given. The
services refuse their own placeholders too (`CHOREO_ENVIRONMENT=prod`).
"""

import os
import sys
from collections.abc import Mapping

from shared.redact import SECRET_NAME
from shared.settings import placeholders


def weak_variables(env: Mapping[str, str]) -> list[str]:
    """Names of the secret variables (by name, or URLs with a password) set to placeholders."""
    return placeholders(
        (name, value) for name, value in env.items() if SECRET_NAME.search(name) or "://" in value
    )


def main() -> int:
    weak = weak_variables(os.environ)
    if weak:
        print(
            f"placeholder secrets refused: {', '.join(sorted(weak))}. Replace each in .env "
            "with a value of your own, e.g. `openssl rand -hex 24` (docs/deploy.md).",
            file=sys.stderr,
        )
        return 1
    print("no placeholder among the secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
