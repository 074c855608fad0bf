"""The HTTP API: routers parse and render; services decide. HTTP types stay here."""
