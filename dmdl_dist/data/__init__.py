"""Data: readers of the published data set layouts into one manifest schema, images, transforms, samplers.

Start at datasets.load_manifest; submodules are imported where used, so importing this package stays cheap.
"""
