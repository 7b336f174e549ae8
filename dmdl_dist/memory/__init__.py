from dmdl_dist.memory.cluster_memory import ClusterMemory, centroids, sequential_update
from dmdl_dist.memory.sharded import ShardedClusterMemory, reshard

__all__ = ["ClusterMemory", "ShardedClusterMemory", "centroids", "reshard", "sequential_update"]
