"""The event schemas shipped with ingest: `<type>.v<N>.json` (JSON Schema 2020-12)."""
