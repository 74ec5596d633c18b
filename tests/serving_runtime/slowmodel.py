"""A real sklearn pipeline that takes its time, so a test can catch a request in flight.

It lives in an importable module because model servers unpickle it in their own processes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.fixtures.models import publish_bytes

DELAY_SECONDS = 1.5


def slow_identity(features: Any) -> Any:
    time.sleep(DELAY_SECONDS)
    return features


def write_slow_model(folder: Path) -> Path:
    features, labels = load_iris(return_X_y=True)
    model = Pipeline([("slow", FunctionTransformer(slow_identity)),
                      ("clf", LogisticRegression(max_iter=500))]).fit(features, labels)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return publish_bytes(folder, buffer.getvalue(), name="slow-iris")
