"""`python -m gateway`: serve the gateway (see gateway.server)."""

from gateway.server import main

main()
