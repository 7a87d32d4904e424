"""The custom resources' pydantic models and their CRD generation.

Both controllers read these; neither owns them. One module per resource
(``kaito.api.machine``); ``kaito.api`` imports only ``kaito.runtime``.
"""
