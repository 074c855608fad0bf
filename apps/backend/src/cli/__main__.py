"""`python -m src.cli`: the careteam command."""

from src.cli import app

app()
