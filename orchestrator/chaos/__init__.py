"""The chaos run: exactly-once delivery proven from outside.

A real deployment (PostgreSQL, its own Redis, ``recall worker`` ×3, ``recall beat``, the
provider sandbox as its own process) takes thousands of users through the win-back journey
while the run breaks it: SIGKILLed workers (some while their provider call is held open),
a Redis restart that loses everything, a second beat, and 10 % of provider calls failing
(5xx, timeouts both ways, 429 with a Retry-After beyond the claim lease). Then it counts,
from the sandbox's own record joined with the users and ``recall export``: duplicates,
lost touches, cap violations and store/provider mismatches.

``plan`` (size, schedule) → ``run`` (the processes, the faults) with ``services`` (what it
owns) → ``evidence`` (record and exports as values) → ``count`` (the verdict, pure).
"""
