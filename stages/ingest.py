"""DVC stage `ingest`: reads params.yaml, runs recomil's ingest step, writes its outputs."""

from recomil.cli import stage_main

if __name__ == "__main__":
    stage_main("ingest")
