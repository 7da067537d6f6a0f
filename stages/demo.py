"""DVC stage `demo`: reads params.yaml, runs recomil's demo step, writes its outputs."""

from recomil.cli import stage_main

if __name__ == "__main__":
    stage_main("demo")
