"""DVC stage `split`: reads params.yaml, runs recomil's split step, writes its outputs."""

from recomil.cli import stage_main

if __name__ == "__main__":
    stage_main("split")
