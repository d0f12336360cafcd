"""Stage 1, extraction: clips -> cache entries and a manifest.

``clip`` extracts one clip with the models of ``clip.ExtractorModels``; ``jobs`` turns one clip into
its cache entry and manifest record; ``pool`` runs jobs in this process or a process pool;
``ray_engine`` runs them on Ray actors (``--engine ray``), guarded by ``reaper`` (no orphans);
``batch`` is the ``extract`` command (discovery, ids, cache reuse, manifest, summary); ``cache``
and ``labels`` are the formats it reads and writes.
"""
