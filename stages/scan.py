"""DVC stage `scan` (runs on every repro): fingerprints the input files outside the project."""

from recomil.cli import stage_main

if __name__ == "__main__":
    stage_main("scan")
