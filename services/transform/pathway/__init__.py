"""Step kind `transform.pathway`: static Pathway pipelines over rows of a lake object.

- `steps`: what the step calls; runs a pipeline in a child process;
- `engine`: the child process, which runs one pipeline in Pathway;
- `pipelines`: the pipelines' contracts and parameter checks (pure, no Pathway).

(This package is Choreo's; `import pathway` inside it is the Pathway library.)
"""
