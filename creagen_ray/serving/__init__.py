"""Ray Serve for trained bundles: store (model ids), api (FastAPI), app (deployments), local, client.

Import the pieces from their modules; this package imports nothing heavy on its own.
"""
