"""`pz serve`: a web page and JSON API that classify plankton images with a trained model
and browse an object store. Everything is served from this package (no CDN, no external URL).

    from planktonzilla.serve import Limits, create_app
    app = create_app("models/supervised", store="store", limits=Limits(max_files=100))

or from the shell: ``pz serve models/supervised --store store`` then open http://127.0.0.1:8000.
See `planktonzilla.serve.app` for the endpoints and the safety limits.
"""

from planktonzilla.serve.app import create_app
from planktonzilla.serve.uploads import Limits, UploadError

__all__ = ["Limits", "UploadError", "create_app"]
