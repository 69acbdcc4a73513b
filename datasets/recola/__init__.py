"""recola: RECOLA from the AVEC 2016 package (audio; arousal and valence)."""
