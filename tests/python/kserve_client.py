#!/usr/bin/env python3
"""KServe v2 compatibility, tested with the real `tritonclient[http]` client against a real node.

Starts `verity node` on a free loopback port with a fresh data directory, publishes the MLP and CNN
fixtures with `verity model publish`, then through tritonclient: server/model liveness and readiness,
model metadata, inference with binary and JSON tensors (inputs and outputs), a model version path, and
error handling. Each result must equal `verity run` on the same model and input bit for bit, and the
receipt in the response parameters must pass `verity verify` with input, output and model. Exit status
1 on any failure.

    python tests/python/kserve_client.py --verity target/release/verity
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def run(cmd, env=None, check=True):
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(cmd)}\n{p.stderr}")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", required=True)
    a = ap.parse_args()
    verity = os.path.abspath(a.verity)
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        node = subprocess.Popen(
            [verity, "node", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "node")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env={**os.environ, "VERITY_LOG": "warn"})
        try:
            line = node.stdout.readline()
            url = next(w for w in line.split() if w.startswith("http://"))
            host = url[len("http://"):]
            env = {**os.environ, "VERITY_NODE": url, "VERITY_KEY_FILE": os.path.join(tmp, "user.key")}
            env.pop("VERITY_KEY", None)
            run([verity, "key", "new"], env)
            vty = {}
            for name, version in [("mlp", "1.0.0"), ("cnn", "3")]:
                vty[name] = os.path.join(tmp, f"{name}.vty")
                run([verity, "model", "compile", f"fixtures/{name}.onnx", "-o", vty[name],
                     "--input-range", "0:1"])
                run([verity, "model", "publish", f"fixtures/{name}.onnx", "--name", name,
                     "--version", version, "--input-range", "0:1"], env)

            client = httpclient.InferenceServerClient(url=host)
            check(client.is_server_live(), "server live")
            check(client.is_server_ready(), "server ready")
            check(client.get_server_metadata()["name"] == "verity", "server metadata")
            check(client.is_model_ready("mlp"), "model ready")
            check(not client.is_model_ready("no-such-model"), "unknown model not ready")

            for name, version in [("mlp", "1.0.0"), ("cnn", "3")]:
                meta = client.get_model_metadata(name)
                inp = meta["inputs"][0]
                out_name = meta["outputs"][0]["name"]
                check(meta["versions"] == [version], f"{name}: metadata lists version {version}")
                doc = json.load(open(os.path.join(ROOT, "fixtures", f"{name}.input.json")))
                x = np.array(doc[inp["name"]]["data"], dtype=np.float32).reshape(inp["shape"])
                # The reference: verity run on the same float32 values.
                xin = os.path.join(tmp, f"{name}.in.json")
                json.dump({inp["name"]: {"shape": list(x.shape), "data": x.astype(np.float64).ravel().tolist()}},
                          open(xin, "w"))
                ref = json.loads(run([verity, "run", vty[name], "--input", xin]).stdout)
                ref_out = np.array(ref["outputs"][out_name]["data"], dtype=np.float64)

                for binary_in, binary_out, ver in [(True, True, ""), (False, False, ""), (True, False, version)]:
                    i0 = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
                    i0.set_data_from_numpy(x, binary_data=binary_in)
                    o0 = httpclient.InferRequestedOutput(out_name, binary_data=binary_out)
                    res = client.infer(name, [i0], outputs=[o0], model_version=ver, request_id="t-1")
                    y = res.as_numpy(out_name)
                    tag = f"{name}: binary_in={binary_in} binary_out={binary_out} version='{ver}'"
                    check(y is not None and y.dtype == np.float64 and np.array_equal(y.ravel(), ref_out.ravel()),
                          f"{tag}: outputs equal `verity run` bit for bit")
                    resp = res.get_response()
                    check(resp.get("id") == "t-1", f"{tag}: request id echoed")
                    receipt = json.loads(resp["parameters"]["verity_receipt"])
                    check(receipt["receipt"]["output_hash"] == ref["output_hash"], f"{tag}: receipt output hash")
                    check(receipt["receipt"]["input_hash"] == ref["input_hash"], f"{tag}: receipt input hash")
                    rpath = os.path.join(tmp, "receipt.json")
                    json.dump(receipt, open(rpath, "w"))
                    opath = os.path.join(tmp, "out.json")
                    json.dump({"outputs": [{"name": out_name, "shape": list(y.shape),
                                            "scale": resp["outputs"][0]["parameters"]["scale"],
                                            "data": y.ravel().tolist()}]}, open(opath, "w"))
                    v = run([verity, "verify", rpath, "--input", xin, "--output", opath, "--model", vty[name]],
                            check=False)
                    check(v.returncode == 0, f"{tag}: `verity verify` accepts the receipt ({v.stdout.strip()})")
                # No outputs requested: tritonclient asks for binary outputs of all.
                i0 = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
                i0.set_data_from_numpy(x)
                res = client.infer(name, [i0])
                check(np.array_equal(res.as_numpy(out_name).ravel(), ref_out.ravel()), f"{name}: default outputs")

            # A classifier whose label output is an ArgMax: an integer output, INT64 in the schema and
            # in responses (binary and JSON), equal to the arg-max of its probabilities.
            import onnx
            from onnx import TensorProto, helper, numpy_helper
            w = numpy_helper.from_array(np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32), "w")
            g = helper.make_graph(
                [helper.make_node("MatMul", ["x", "w"], ["logits"]),
                 helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
                 helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
                "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 6])],
                [helper.make_tensor_value_info("label", TensorProto.INT64, [5]),
                 helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [5, 4])], [w])
            clf = os.path.join(tmp, "classifier.onnx")
            onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), clf)
            run([verity, "model", "publish", clf, "--name", "classifier", "--version", "1", "--input-range=-2:2"], env)
            meta = client.get_model_metadata("classifier")
            kinds = {o["name"]: o["datatype"] for o in meta["outputs"]}
            check(kinds == {"label": "INT64", "probabilities": "FP64"}, f"classifier: output datatypes {kinds}")
            x = np.random.default_rng(4).uniform(-2, 2, size=(5, 6)).astype(np.float32)
            for binary in (True, False):
                i0 = httpclient.InferInput("x", [5, 6], "FP32")
                i0.set_data_from_numpy(x, binary_data=binary)
                outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
                res = client.infer("classifier", [i0], outputs=outs)
                label, probs = res.as_numpy("label"), res.as_numpy("probabilities")
                check(label is not None and label.dtype == np.int64 and
                      np.array_equal(label, np.argmax(probs, axis=1)) and
                      np.array_equal(label, np.argmax(x @ numpy_helper.to_array(w), axis=1)),
                      f"classifier (binary={binary}): INT64 labels {label} = arg-max of the probabilities")

            # Errors come back as InferenceServerException with the node's message.
            bad = httpclient.InferInput("input", [1, 3], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
            try:
                client.infer("mlp", [bad])
                check(False, "wrong shape is refused")
            except InferenceServerException as e:
                check("shape" in str(e), f"wrong shape is refused ({e})")
            try:
                client.infer("no-such-model", [bad])
                check(False, "unknown model is refused")
            except InferenceServerException as e:
                check("no model" in str(e), f"unknown model is refused ({e})")
            client.close()
        finally:
            node.terminate()
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("kserve client: all checks passed")


if __name__ == "__main__":
    main()
