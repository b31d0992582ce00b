"""Path and query parameters that several routes share."""

from typing import Annotated

from fastapi import Path, Query

from wallet.models import ASSET_PATTERN, USER_ID_PATTERN

UserIdPath = Annotated[str, Path(pattern=USER_ID_PATTERN, max_length=64, examples=["alice"])]
AssetPath = Annotated[str, Path(pattern=ASSET_PATTERN, max_length=16, examples=["GOLD"])]
AssetQuery = Annotated[str | None, Query(pattern=ASSET_PATTERN, max_length=16)]
