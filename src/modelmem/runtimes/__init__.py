"""Runtimes: each one's habits as a frozen profile (profiles.py), and what only it computes."""

from modelmem.runtimes.profiles import PROFILES, RUNTIMES, RuntimeProfile, lookup_profile, profile_for

__all__ = ["PROFILES", "RUNTIMES", "RuntimeProfile", "lookup_profile", "profile_for"]
