"""Audio path: provider PCM -> 8 kHz telephony codec -> 20 ms frames -> paced RTP."""
