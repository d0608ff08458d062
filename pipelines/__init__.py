"""Ray Data pipelines composed from operators, the `samdata` CLI and job submission."""
