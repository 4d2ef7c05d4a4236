"""The REST API (`/api/v3`): FastAPI app, request/response schemas, problem+json errors."""
