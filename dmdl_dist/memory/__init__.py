from dmdl_dist.memory.cluster_memory import ClusterMemory, centroids, momentum_update
from dmdl_dist.memory.sharded import ShardedClusterMemory, reshard

__all__ = ["ClusterMemory", "ShardedClusterMemory", "centroids", "momentum_update", "reshard"]
