"""DVC stage `check_params`: validates the whole params.yaml (unknown or invalid keys fail here)."""

from recomil.cli import stage_main

if __name__ == "__main__":
    stage_main("check_params")
