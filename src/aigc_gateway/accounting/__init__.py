"""Accounting: the pure maths of prices, periods and reports (``core``) and the services
that read and write the ledger (``services``: budgets, usage reports)."""
