"""Ray compute: indexing tasks that sample and encode models, and the shard scorer actors."""
