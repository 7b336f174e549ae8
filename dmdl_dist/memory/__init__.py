from dmdl_dist.memory.cluster_memory import ClusterMemory, centroids

__all__ = ["ClusterMemory", "centroids"]
