"""Step kind `transform.sql`: DuckDB over lake objects.

- `steps`: the step (fetch the inputs from S3, run the job, write the outputs as Parquet);
- `engine`: DuckDB over local files, sandboxed (knows neither S3 nor workflows);
- `pipelines`: the named pipelines' contracts; their scripts are the `*.sql` files here.
"""
