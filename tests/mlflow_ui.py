"""What the MLflow UI reads: a saved view's envelope in an experiment's tags (the check that leukexp's view opens)."""

import json
from typing import Any

from leukexp.tracking.views import RANKING_VIEW_ID, VIEW_TAG_PREFIX


def read_view(tags: dict[str, str], view_id: str = RANKING_VIEW_ID) -> tuple[str, dict[str, Any]] | None:
    """A saved view's name and state from an experiment's tags, read as the UI reads it (None if absent)."""
    value = tags.get(VIEW_TAG_PREFIX + view_id)
    if value is None:
        return None
    envelope = json.loads(value)
    if not (isinstance(envelope.get("name"), str) and isinstance(envelope.get("createdAt"), int)
            and isinstance(envelope.get("state"), str)):
        raise ValueError("not a saved-view envelope")
    return envelope["name"], json.loads(envelope["state"])
