"""Models saved by earlier code keep loading: ``data/saved_models`` holds a crowd model, a
prediction model and a converted EmoNet's configuration saved on 2026-12-06
(``tests/make_saved_model_fixtures.py``). They load in a fresh process that imports nothing but
the package, and give the outputs recorded when they were saved. A failure here means a
registered name or a layer's configuration changed: keep the old one loading (an alias, a
config upgrade), never remake the fixture to get green."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "data" / "saved_models"
ROOT = Path(__file__).resolve().parents[2]

_LOAD = """
import gzip, json, sys
import numpy as np
import keras
import affectnet_tf  # registers the package's layers, losses and metrics; nothing else imported

folder = sys.argv[1]
expected = np.load(f"{folder}/expected.npz")
result = {}
for name in ("model", "crowd_model"):
    model = keras.models.load_model(f"{folder}/{name}.keras")
    outputs = model.predict(expected["images"], verbose=0)
    outputs = outputs if isinstance(outputs, dict) else {"output": outputs}
    result[name] = {
        head: float(np.max(np.abs(np.asarray(value) - expected[f"{name}/{head}"])))
        for head, value in outputs.items()
    }
    result[name + "/heads"] = sorted(outputs)
    result[name + "/expected"] = sorted(
        key.split("/", 1)[1] for key in expected.files if key.startswith(name + "/")
    )
with gzip.open(f"{folder}/emonet_8.config.json.gz", "rt") as stream:
    emonet = keras.saving.deserialize_keras_object(json.load(stream))
outputs = emonet(np.zeros((1, 64, 64, 3), "uint8"))
result["emonet_8"] = {
    "params": int(emonet.count_params()),
    "expected_params": int(expected["emonet_8/params"]),
    "heads": sorted(outputs),
    "expression": list(outputs["expression"].shape),
}
print(json.dumps(result))
"""


def test_models_saved_by_earlier_code_load_and_predict_the_same():
    loaded = subprocess.run(
        [sys.executable, "-c", _LOAD, str(FIXTURES)],
        capture_output=True,
        text=True,
        cwd=FIXTURES,  # not the repository root: the package as installed
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    for name in ("model", "crowd_model"):
        assert result[name + "/heads"] == result[name + "/expected"], name
        for head, difference in result[name].items():
            np.testing.assert_allclose(difference, 0.0, atol=1e-5, err_msg=f"{name} {head}")
    emonet = result["emonet_8"]
    assert emonet["params"] == emonet["expected_params"]
    assert emonet["heads"] == ["arousal", "expression", "valence"]
    assert emonet["expression"] == [1, 8]
