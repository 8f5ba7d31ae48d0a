"""Ingest: items read, validated and decoded in worker threads, embedded in batches, written to a collection
with content-derived ids (a re-run skips what landed), optionally with region points for large images."""
