"""The serving gateway (OpenAI-compatible, canary routing, request log).

Not built yet: it lands with the gateway issue. Nothing in the embedded stack
starts it today, and `flywheel status` does not list it.
"""
