"""The API's routes, one ``APIRouter`` per OpenAPI tag; ``sam3v.api.app.create_app`` includes them."""
