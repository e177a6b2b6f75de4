"""The metadata role: namespace, journal, block map, placement, service."""
