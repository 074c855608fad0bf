from fastapi import APIRouter

from src.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: 200 while the process is up (does not touch the database)."""
    return Health(status="ok")
