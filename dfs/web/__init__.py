"""The HTTP side door of every dfsd (INTERFACE.md, HTTP section): health probes, Prometheus
metrics, the JSON of `status`/`fsck`, and file downloads, served by aiohttp in the daemon's
own event loop. httpd.py serves, metrics.py measures, meta_routes.py and chunk_routes.py say
what each role answers."""
