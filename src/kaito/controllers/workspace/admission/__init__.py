"""Workspace admission: the rules (``validation``), the webhook serving them, its certificate."""
