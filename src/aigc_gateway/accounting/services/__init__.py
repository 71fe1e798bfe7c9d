"""Budgets and usage reports: the accounting services over the ledger in the store."""
