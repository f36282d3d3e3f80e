"""Dependencies routes declare with ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.config import Settings
from app.scoring.service import PredictionService


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_service(request: Request) -> PredictionService:
    service: PredictionService = request.app.state.service
    return service


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ServiceDep = Annotated[PredictionService, Depends(get_service)]

_bearer = HTTPBearer(auto_error=False)


def require_reload_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Reload is off without a configured token; otherwise the bearer token must match."""
    if settings.reload_token is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "model reload is disabled: set CTR_RELOAD_TOKEN to enable"
        )
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.reload_token.get_secret_value().encode()
    if not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid reload token")


ReloadAuth = Depends(require_reload_token)
