"""HTTP routes, one module per area; registered in exactly one place, `app.create_app`."""

from starlette.convertors import StringConvertor, register_url_convertor


class TextConvertor(StringConvertor):
    """Like Starlette's `path`, but `.` matches line breaks too, so `/chat/a%0Ab` reaches the
    route with its newline instead of a 404 (Starlette decodes the path before matching)."""

    regex = "(?s:.*)"


# Registered here, before any route module is imported: a path is compiled as it is declared.
register_url_convertor("text", TextConvertor())
