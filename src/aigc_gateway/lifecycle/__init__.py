"""The lifecycle: user actions set desired state; one controller makes it so."""
