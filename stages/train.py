"""DVC stage `train`: reads params.yaml, runs recomil's train step, writes its outputs."""

from recomil.cli import stage_main

if __name__ == "__main__":
    stage_main("train")
