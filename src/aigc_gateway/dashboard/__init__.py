"""The gateway's HTML: page routes (``routes``, above the API) and the rendering kit
(``ui``: Jinja templates in ``ui/html``, static files, the two languages, view models)."""
