"""The custom resources' pydantic models and their CRD generation.

Both controllers read these; neither owns them. One module per resource
(``kaito.api.workspace``, ``kaito.api.machine``, ``kaito.api.nodeclaim``); ``kaito.api.crds``
generates every CRD the project owns into ``deploy/crds``; ``kaito.api`` imports only
``kaito.runtime``.
"""
