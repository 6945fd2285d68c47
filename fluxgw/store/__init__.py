"""Shared state for several gateways (docs/redis.md): the Redis-backed pieces and the rules
for what happens while Redis is unreachable."""
