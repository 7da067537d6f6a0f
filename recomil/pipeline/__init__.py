"""The work of each DVC stage, as functions (the scripts in ``stages/`` only call these)."""
