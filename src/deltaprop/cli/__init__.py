"""The typer CLI: parses and prints; the work happens in deltaprop.training and deltaprop.jobs."""
