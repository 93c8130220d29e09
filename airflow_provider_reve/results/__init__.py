"""What happens to a finished task's files: download, storage, manifest, lineage."""
