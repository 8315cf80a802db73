"""The transform service's streaming Pathway pipelines (`company_analytics`,
`sales_windows`), kept up to date in PostgreSQL as events arrive.

- `pipelines`: what the child process runs: the Pathway graph, fed by `reader` (a
  subject read in stream order) through `rows` (an event's data as a row);
- `__main__`: the child process, `python -m services.transform.streaming`;
- `supervisor`: in the service process, starts and restarts the child, and turns its
  progress reports into metrics (it never imports Pathway).
"""
