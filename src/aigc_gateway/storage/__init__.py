"""Users' data folders: the file browser and the storage quotas."""
