"""Split manifests built from the official UCF101, HMDB51 and Kinetics-400 files."""
