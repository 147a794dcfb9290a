"""The network's dashboard over the stored results (``fleet dashboard``): engines, queries, pages, server."""
