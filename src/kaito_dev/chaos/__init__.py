"""``kaito dev chaos``: seeded cycles of Workspaces under kills and ARM fault storms.

`schedule` (the plan, a pure function of the seed), `cluster` (the local stack a run
kills and restarts), `observe` (samples and what they prove), `driver` (runs a plan,
judges it, writes the report), `cli` (the command).
"""
