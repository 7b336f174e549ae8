"""dmdl_dist: DMDL for unsupervised visible-infrared person re-identification, local or on Ray Train."""

__version__ = "0.1.0"
