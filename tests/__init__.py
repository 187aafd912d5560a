"""``unit/`` (pure logic), ``integration/`` (real broker, PostgreSQL, Redis, Celery), ``e2e/`` (the loop);
``support/`` holds the fixtures' helpers."""
