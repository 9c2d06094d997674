"""Partner systems: processors that erase on their own and answer later (OpenDSR, signed webhooks, manual tasks).

Kept light: the connectors live in their own modules, loaded through the registry.
"""
