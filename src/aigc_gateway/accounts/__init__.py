"""Accounts and access: sign-in, sessions, tokens, teams, instance hand-over, forward-auth, audit."""
