"""What a tuning Workspace runs as: one ``batch/v1`` Job (``job``)."""
