"""Runtimes run engine workloads. They know nothing about users or HTTP."""
