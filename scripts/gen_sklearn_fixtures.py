#!/usr/bin/env python3
"""Write fixtures/sklearn_*.onnx: scikit-learn models as skl2onnx exports them (classical-ML operators:
Scaler, LinearClassifier, Normalizer, LinearRegressor, ArrayFeatureExtractor; a classifier's label as
the class at the arg-max), fitted on a fixed synthetic 4-feature, 3-class problem, batch 8. The test
suite reads the files; regenerating needs scikit-learn and skl2onnx (not test dependencies).

    pip install scikit-learn==1.9.1 skl2onnx==1.20.0 && python scripts/gen_sklearn_fixtures.py
"""
import os

import numpy as np
import onnx
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    rng = np.random.default_rng(11)
    centers = rng.uniform(1, 7, size=(3, 4))
    y = rng.integers(0, 3, size=300)
    x = (centers[y] + rng.normal(0, 0.8, size=(300, 4))).astype(np.float32)
    models = {
        "sklearn_mlp": make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000,
                                                                     random_state=0)),
        "sklearn_logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "sklearn_logreg_l2": make_pipeline(Normalizer(), LogisticRegression(max_iter=1000)),
        "sklearn_linreg": make_pipeline(StandardScaler(), LinearRegression()),
    }
    for name, model in models.items():
        regressor = name.endswith("linreg")
        target = (x[:, 0] * 2 + y).astype(np.float32) if regressor else y
        model.fit(x, target)
        opts = None if regressor else {id(model.steps[-1][1]): {"zipmap": False}}
        m = to_onnx(model, x[:1], options=opts, target_opset=17)
        for t in list(m.graph.input) + list(m.graph.output):
            t.type.tensor_type.shape.dim[0].dim_value = 8
        m.producer_name = "verity-fixtures"
        onnx.save(m, os.path.join(ROOT, "fixtures", f"{name}.onnx"))
        print(name, [n.op_type for n in m.graph.node])


if __name__ == "__main__":
    main()
