"""Entry points, the top layer: the CLI (``sam3v.cli``), the HTTP API (``sam3v.api``) and the
embedded runner (``sam3v.embedded``). Only this layer imports the data plane (``workers``)."""
