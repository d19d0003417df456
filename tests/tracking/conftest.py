from __future__ import annotations

import pytest
from sqlalchemy import Engine

from tests.tracking.seed import Seeder


@pytest.fixture
def seed(db_engine: Engine) -> Seeder:
    return Seeder(db_engine)
