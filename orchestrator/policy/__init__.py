"""Policy: frequency caps (Redis Lua), quiet hours and holidays, consent.

``windows`` and ``rules`` are pure arithmetic; ``caps`` is the Redis store (one Lua script);
``reference`` is the same semantics in plain Python; ``rebuild`` reloads caps from SQL;
``quiet`` defers to send hours; ``consent`` reads and records opt-outs. See docs/policy.md.
"""
