"""synthetic_avd: a generated audio + mocap corpus with A/V/D gold standards (no download)."""
