"""REST API routers, one per resource, over the shared service layer."""
