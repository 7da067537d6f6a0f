"""DVC stage `evaluate`: reads params.yaml, runs recomil's evaluate step, writes its outputs."""

from recomil.cli import stage_main

if __name__ == "__main__":
    stage_main("evaluate")
