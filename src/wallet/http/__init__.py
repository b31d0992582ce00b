"""The HTTP layer: the app, one router module per resource, problem documents, authentication, OpenAPI."""
