"""The chunkserver role: block store, pipeline service, link to meta."""
