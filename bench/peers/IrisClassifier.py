"""The tutorial's Seldon Python-wrapper model class, loading the same model folder abflow serves.

``seldon-core-microservice IrisClassifier --service-type MODEL`` imports this module from the
working directory and calls ``predict`` for every request. It differs from the tutorial's class only
where the tutorial is out of date: the model path comes from ``MODEL_PATH`` (a folder with
``model.joblib`` + ``metadata.json``, abflow's artifact layout) instead of a file next to the code,
``sklearn.externals.joblib`` is plain ``joblib`` now, and ``class_names`` is a method because the
1.18 wrapper logs a deprecation warning on every request for the attribute form, which would make
the peer slower than it is.
"""

import json
import os
from pathlib import Path

import joblib

TUTORIAL_CLASS_NAMES = ["iris-setosa", "iris-versicolor", "iris-virginica"]


class IrisClassifier:
    def __init__(self):
        folder = Path(os.environ["MODEL_PATH"])
        self.model = joblib.load(folder / "model.joblib")
        metadata = folder / "metadata.json"
        if metadata.exists():
            self._class_names = json.loads(metadata.read_text())["class_names"]
        else:
            self._class_names = TUTORIAL_CLASS_NAMES

    def class_names(self):
        return self._class_names

    def predict(self, X, features_names):
        return self.model.predict_proba(X)
