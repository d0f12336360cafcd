"""Feature extractors: video/audio decoding, transcripts, text, face, acoustic, alignment."""
