# -*- test-case-name: tests.unit.test_web_service -*-
"""
The monitor's pages, scripts and styles, served from a directory by
L{twisted.web.static.File}: no listings, no hidden files, nothing outside
it, GET and HEAD only; what is not there is a JSON 404.
"""

from twisted.web import static

from dispycos.web.resources import ErrorResource, json_body

__all__ = ["Pages"]

#: the content types of the pages' files (a charset for the text ones)
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".json": "application/json", ".png": "image/png",
                 ".svg": "image/svg+xml", ".ico": "image/x-icon", ".txt": "text/plain; charset=utf-8"}

NOT_FOUND = ErrorResource(404, "not found")
FORBIDDEN = ErrorResource(403, "forbidden")


class Pages(static.File):
    """
    The files under C{path}: C{/} is its C{cluster.html} (or
    C{index.html}), a directory below its C{index.html}.
    """

    contentTypes = dict(static.File.contentTypes, **CONTENT_TYPES)
    indexNames = ["cluster.html", "index.html"]
    childNotFound = NOT_FOUND
    forbidden = FORBIDDEN

    def __init__(self, path, *args, **kwargs):
        super().__init__(path, *args, **kwargs)
        self.childNotFound = NOT_FOUND

    def getChild(self, path, request):
        if path.startswith(b".") or b"\x00" in path or b"\\" in path:
            return NOT_FOUND
        return super().getChild(path, request)

    def directoryListing(self):
        return NOT_FOUND

    def createSimilarFile(self, path):
        f = super().createSimilarFile(path)
        f.indexNames = ["index.html"]
        return f

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            return json_body(request, {"error": "method not allowed"}, 405)
        request.setHeader(b"cache-control", b"no-cache")
        return super().render(request)
