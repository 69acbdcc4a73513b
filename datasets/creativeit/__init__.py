"""creativeit: USC CreativeIT arranged in the normalised layout (audio, mocap; A/V/D)."""
