"""The engine-set format: the manifest and its checksums, the writer, and atomic output for every file the tool
writes."""
