"""Accounts, tokens, teams, shares and the access decision: services over the store."""
