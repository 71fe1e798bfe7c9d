"""Server-rendered pages (Jinja2). The dashboard grows here; sign-in pages live here now."""
