"""Drift checks on SQL (light: no torch), run by the training worker's beat schedule.

- ``drift``: prompt drift vs the training reference, negative-feedback drift per serving role
- ``features``: prompt features and PSI
"""
