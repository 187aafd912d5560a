"""The ingest benchmark's baseline: a FastAPI POST that parses the same body and returns 202."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, status

from schemas.http import FeedbackAccepted, FeedbackRequest

app = FastAPI()


@app.post("/v1/feedback", status_code=status.HTTP_202_ACCEPTED)
async def feedback(body: FeedbackRequest) -> FeedbackAccepted:
    return FeedbackAccepted(event_id=str(uuid.uuid4()))
