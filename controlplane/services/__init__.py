"""Domain logic. Services raise domain errors and never import aiohttp.web."""
