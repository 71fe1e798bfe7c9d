"""Engine templates: YAML files an admin keeps in a folder, validated with a schema."""
