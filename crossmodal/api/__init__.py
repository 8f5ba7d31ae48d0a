"""The HTTP API behind the plugin's endpoints and `serve`: routes, OpenAPI, Prometheus metrics, and Dify's
External Knowledge API over a collection."""
