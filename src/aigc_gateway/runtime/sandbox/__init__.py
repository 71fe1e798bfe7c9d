"""The engine sandbox: every engine in its own namespaces, uid and cgroup, reached only
through a Unix socket. See docs/security.md for the threat model and what each part enforces.

- :mod:`.policy`: the sandbox of one engine and the bwrap/setpriv/socat command line (pure);
- :mod:`.cgroups`: memory, CPU and pids limits, OOM counts, kill-all (v1 and v2);
- :mod:`.uids`: one persistent uid per user from a configured range;
- :mod:`.detect`: what this host supports (for the runtime, ``doctor`` and ``/healthz``);
- :mod:`.launch`: preparing one engine's sandbox on this host.
"""
