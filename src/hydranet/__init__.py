"""hydranet: multi-task learning from a laptop to a cluster."""
