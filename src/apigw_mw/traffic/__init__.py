"""API keys, usage plans, token buckets and quotas."""
