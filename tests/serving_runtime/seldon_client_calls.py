"""Run by the interpreter of a venv holding Seldon Core's Python client (seldon-core 1.17.1), never by
abflow's: ``python seldon_client_calls.py HOST:PORT DEPLOYMENT``. Prints one JSON line per call, so the
test in ``test_seldon_client.py`` can judge what Seldon's own client sent and got."""

from __future__ import annotations

import json
import sys

import numpy as np
from seldon_core.seldon_client import SeldonClient
from seldon_core.utils import seldon_message_to_json


def main() -> None:
    endpoint, deployment = sys.argv[1], sys.argv[2]
    features = np.array([[5.1, 3.5, 1.4, 0.2]])
    for gateway, namespace in (("seldon", None), ("ambassador", "seldon"), ("ambassador", None), ("istio", "models")):
        client = SeldonClient(gateway=gateway, transport="rest", gateway_endpoint=endpoint,
                              deployment_name=deployment, namespace=namespace, client_return_type="proto")
        for payload_type in ("tensor", "ndarray"):
            for reward in (0.0, 1.0):  # one feedback per prediction: a repeat for the same puid counts once
                prediction = client.predict(data=features, payload_type=payload_type)
                answer = seldon_message_to_json(prediction.response) if prediction.success else None
                told = client.feedback(prediction_request=prediction.request, prediction_response=prediction.response,
                                       reward=reward)
                print(json.dumps({"gateway": gateway, "namespace": namespace, "payload_type": payload_type,
                                  "success": prediction.success, "msg": prediction.msg, "response": answer,
                                  "feedback": {"success": told.success, "msg": told.msg}}), flush=True)


if __name__ == "__main__":
    main()
