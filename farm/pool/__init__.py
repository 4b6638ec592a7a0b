"""The worker pool: elastic slots, health and recycling of worker processes, the supervisor."""
