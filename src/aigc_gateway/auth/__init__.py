"""Accounts, API tokens and permission checks."""
