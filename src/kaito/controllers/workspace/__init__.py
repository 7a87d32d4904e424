"""The workspace controller: Workspace admission (``webhook``, ``validation``) first.

- ``validation``: every admission rule of WORKSPACE.md as plain functions.
- ``webhook``: the HTTPS server answering the apiserver's AdmissionReviews, with its own
  certificate and the ValidatingWebhookConfiguration it keeps pointed at itself.
"""
