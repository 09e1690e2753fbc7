"""Publishing a cycle's results to Redis (atomic snapshot, TTL, cycle id)."""
