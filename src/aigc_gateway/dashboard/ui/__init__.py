"""The rendering kit of the pages: Jinja templates (``html/``), static files, the two
languages (``i18n/``), view models and the pure helpers (charts, costs). No I/O of its own."""
