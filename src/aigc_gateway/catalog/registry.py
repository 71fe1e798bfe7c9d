"""The live template catalog: loaded from the folder, revisions recorded. Re-read on a change in
the folder and on SIGHUP by the template duties (:func:`aigc_gateway.app.template_duties`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aigc_gateway.catalog.loader import Catalog, LoadedTemplate, load_dir
from aigc_gateway.store import instances as repo
from aigc_gateway.store.db import Database

log = logging.getLogger(__name__)


class TemplateRegistry:
    """Holds the current :class:`Catalog` and the store revision id of each loaded template."""

    def __init__(self, directory: Path, db: Database) -> None:
        self.directory = directory
        self._db = db
        self.catalog = Catalog()
        self.revision_ids: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def reload(self) -> Catalog:
        """Re-read the folder: valid templates replace the old ones; problems are kept."""
        async with self._lock:
            catalog = await asyncio.to_thread(load_dir, self.directory)
            revision_ids: dict[str, int] = {}
            async with self._db.write() as session:
                for loaded in catalog.templates.values():
                    t = loaded.template
                    revision_ids[loaded.id] = await repo.record_revision(
                        session,
                        template_id=t.id,
                        family=t.family,
                        version=t.version,
                        digest=loaded.digest,
                        source=loaded.source,
                        spec=t.model_dump(mode="json", by_alias=True),
                    )
            self.catalog, self.revision_ids = catalog, revision_ids
            for problem in catalog.problems:
                log.warning("template problem: %s", problem)
            log.info(
                "loaded %d templates (%d problems) from %s",
                len(catalog.templates),
                len(catalog.problems),
                self.directory,
            )
            return catalog

    def get(self, template_id: str) -> LoadedTemplate | None:
        return self.catalog.get(template_id)
