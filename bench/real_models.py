#!/usr/bin/env python3
"""Verity against onnxruntime on real architectures, exported here from torchvision / torch.

For each architecture: export it once to ONNX (random weights; BatchNorm statistics made realistic by
running a few random batches through the network in training mode), make calibration and held-out
evaluation inputs from one seeded distribution, compile it with `verity model compile --precision P`,
quantize it with onnxruntime's own static int8 quantization (QDQ, per-channel weights, same calibration
data), and time onnxruntime f32, onnxruntime int8 and Verity on the same input, one thread and all threads.
The engines alternate for several rounds and each keeps its best median. Accuracy is measured on the
held-out inputs against onnxruntime f32: max |error| relative to the output's largest magnitude, top-1
agreement (classifiers) or cosine (encoders), and file sizes.

Needs, beside the repository's Python packages: torch and torchvision (a large install, so this script is a
benchmark, never part of the test suite). Usage:

    python bench/real_models.py [--models resnet50,mobilenet_v2] [--precision int8] [--runs 20]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CACHE = os.path.join(ROOT, "bench", ".models")


class FirstOutput:
    """Wraps a model whose forward returns a dict (torchvision segmentation): its "out" tensor."""

    @staticmethod
    def wrap(m):
        import torch

        class W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m(x)["out"]
        return W()


def image_net(ctor, **kw):
    def make():
        import torch
        m = ctor(weights=None, **kw)
        # torchvision starts ViT's classifier head at zero: a random one, so the outputs carry signal
        if hasattr(m, "heads"):
            with torch.no_grad():
                m.heads.head.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(1))
        # realistic BatchNorm statistics: a few random batches in training mode
        m.train()
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for _ in range(4):
                m(torch.randn(8, 3, 224, 224, generator=g))
        m.eval()
        if kw.get("weights_backbone", 1) is None:
            m = FirstOutput.wrap(m)
        return m, (1, 3, 224, 224), "image"
    return make


def encoder():
    """A MiniLM-L6-sized sentence encoder (6 layers, hidden 384, 12 heads, FFN 1536, seq 16) taking
    token embeddings, with mean pooling."""
    import torch

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(384, 12, 1536, dropout=0.0, activation="gelu",
                                                     batch_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(384)

        def forward(self, x):
            return self.norm(self.enc(x)).mean(dim=1)

    torch.manual_seed(0)
    enc = Enc().eval()
    # TransformerEncoder deep-copies one layer: give every layer weights of its own (the exporter
    # would otherwise store the identical tensors once)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.dim() >= 2:
                torch.nn.init.xavier_uniform_(p)
            elif "norm" in name and "weight" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.uniform_(-0.1, 0.1)
    return enc, (1, 16, 384), "embedding"


def archs():
    import torchvision.models as tv
    return {
        "resnet50": image_net(tv.resnet50),
        "mobilenet_v2": image_net(tv.mobilenet_v2),
        "densenet121": image_net(tv.densenet121),
        "vgg19": image_net(tv.vgg19),
        "vit_b_16": image_net(tv.vit_b_16),
        "squeezenet1_0": image_net(tv.squeezenet1_0),
        "googlenet": image_net(tv.googlenet, aux_logits=False, init_weights=True),
        "shufflenet_v2": image_net(tv.shufflenet_v2_x1_0),
        "efficientnet_b0": image_net(tv.efficientnet_b0),
        # segmentation: bilinear Resize, HardSigmoid, HardSwish (outputs compared per pixel)
        "lraspp_mobilenet_v3": image_net(tv.segmentation.lraspp_mobilenet_v3_large, weights_backbone=None),
        # atrous spatial pyramid pooling: 3×3 convolutions at dilation 12, 24 and 36 over a 14×14 map
        "deeplabv3_mobilenet_v3": image_net(tv.segmentation.deeplabv3_mobilenet_v3_large,
                                            weights_backbone=None, aux_loss=False),
        "resnet18": image_net(tv.resnet18),
        "resnext50_32x4d": image_net(tv.resnext50_32x4d),
        "regnet_x_400mf": image_net(tv.regnet_x_400mf),
        "regnet_y_400mf": image_net(tv.regnet_y_400mf),
        "mnasnet1_0": image_net(tv.mnasnet1_0),
        "mobilenet_v3_large": image_net(tv.mobilenet_v3_large),
        "efficientnet_v2_s": image_net(tv.efficientnet_v2_s),
        "inception_v3": image_net(tv.inception_v3, aux_logits=False, init_weights=True),
        "alexnet": image_net(tv.alexnet),
        # LayerNorm over channels, GELU, depthwise 7×7
        "convnext_tiny": image_net(tv.convnext_tiny),
        # shifted-window attention (rolls, window partitions, relative position bias)
        "swin_t": image_net(tv.swin_t),
        # MBConv with squeeze-excitation, block and grid attention
        "maxvit_t": image_net(tv.maxvit_t),
        "encoder": encoder,
    }


def export(name):
    path = os.path.join(CACHE, f"{name}.onnx")
    meta = os.path.join(CACHE, f"{name}.json")
    if os.path.exists(path) and os.path.exists(meta):
        return path, json.load(open(meta))
    import torch
    os.makedirs(CACHE, exist_ok=True)
    model, shape, kind = archs()[name]()
    x = torch.randn(*shape)
    torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], opset_version=17,
                      dynamo=False)
    info = {"shape": list(shape), "kind": kind}
    json.dump(info, open(meta, "w"))
    return path, info


def samples(shape, n, seed):
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal((n, *shape[1:]), dtype=np.float32), -3, 3)


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_median_ms(sess, x, runs):
    sess.run(None, {"x": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def ort_int8(path, calib, out):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)

    pre = out + ".pre.onnx"
    try:
        quant_pre_process(path, pre)
    except Exception:  # its symbolic shape inference refuses some torch exports (ViT's Reshape)
        pre = path
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def accuracy(ref, got, kind):
    # per sample [1, classes, H, W]: a segmentation map, compared by the top class of every pixel
    if kind == "image" and ref.ndim == 5:
        ref, got = ref[:, 0], got.reshape(ref.shape)[:, 0]
        rel = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30))
        return {"max_rel_err": rel, "top1": float((ref.argmax(1) == got.argmax(1)).mean())}
    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    rel = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30))
    if kind == "image":
        agree = float((ref.argmax(1) == got.argmax(1)).mean())
        return {"max_rel_err": rel, "top1": agree}
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)
    return {"max_rel_err": rel, "min_cosine": float(cos.min())}


def verity_outputs(verity, vty, evals, tmp):
    outs = []
    for i, e in enumerate(evals):
        p = os.path.join(tmp, f"e{i}.npy")
        np.save(p, e[None])
        r = subprocess.run([verity, "run", vty, "--input", p], check=True, capture_output=True)
        doc = json.loads(r.stdout)
        outs.append(np.array(next(iter(doc["outputs"].values()))["data"], dtype=np.float64))
    return np.stack(outs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,mobilenet_v2,densenet121,vit_b_16,encoder")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--eval", type=int, default=8)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--skip-ort-int8", action="store_true")
    ap.add_argument("--verity", default=os.path.join(ROOT, "target", "release", "verity"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    results = []
    for name in args.models.split(","):
        path, info = export(name)
        shape, kind = info["shape"], info["kind"]
        calib = samples(shape, args.calibration, 1)
        evals = samples(shape, args.eval, 2)
        x = evals[:1]
        row = {"model": name, "onnx_mb": os.path.getsize(path) / 1e6}
        with tempfile.TemporaryDirectory() as tmp:
            cpath, epath = os.path.join(tmp, "calib.npy"), os.path.join(tmp, "eval.npy")
            np.save(cpath, calib)
            np.save(epath, evals)
            vty = os.path.join(tmp, f"{name}.vty")
            t = time.perf_counter()
            c = subprocess.run(["/usr/bin/time", "-f", "%M", args.verity, "model", "compile", path, "-o", vty,
                                "--calibration", cpath, "--eval", epath, "--precision", args.precision],
                               capture_output=True, text=True)
            row["compile_s"] = time.perf_counter() - t
            if c.returncode != 0:
                row["error"] = (c.stderr.strip().splitlines() or ["?"])[-2:]
                print(json.dumps(row), flush=True)
                results.append(row)
                continue
            row["compile_peak_mb"] = int(c.stderr.strip().splitlines()[-1]) / 1e3
            row["vty_mb"] = os.path.getsize(vty) / 1e6
            row["vty_over_onnx"] = row["vty_mb"] / row["onnx_mb"]
            ref = np.stack([ort_session(path, 1).run(None, {"x": e[None]})[0] for e in evals])
            row["verity_acc"] = accuracy(ref, verity_outputs(args.verity, vty, evals, tmp), kind)
            q8 = None
            if not args.skip_ort_int8:
                try:
                    q8 = ort_int8(path, calib, os.path.join(tmp, "int8.onnx"))
                    got = np.stack([ort_session(q8, 1).run(None, {"x": e[None]})[0] for e in evals])
                    row["ort_int8_acc"] = accuracy(ref, got, kind)
                except Exception as e:  # the peer's quantizer refusing a model is a result too
                    row["ort_int8_error"] = str(e)[:200]
                    q8 = None
            xp = os.path.join(tmp, "x.npy")
            np.save(xp, x)
            for th in threads:
                best = {"ort_f32": float("inf"), "ort_int8": float("inf"), "verity": float("inf")}
                sessions = {"ort_f32": ort_session(path, th)}
                if q8:
                    sessions["ort_int8"] = ort_session(q8, th)
                for _ in range(args.rounds):
                    for k, s in sessions.items():
                        best[k] = min(best[k], ort_median_ms(s, x, args.runs))
                    out = subprocess.run([args.verity, "run", vty, "--input", xp, "--threads", str(th),
                                          "--bench", str(args.runs)], check=True, capture_output=True)
                    best["verity"] = min(best["verity"], json.loads(out.stdout)["latency"]["median_us"] / 1e3)
                row[f"t{th}"] = {k: round(v, 2) for k, v in best.items() if v != float("inf")}
                row[f"t{th}"]["ratio_f32"] = round(best["verity"] / best["ort_f32"], 3)
                if q8:
                    row[f"t{th}"]["ratio_int8"] = round(best["verity"] / best["ort_int8"], 3)
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)
    print(f"\n{'model':<14}{'threads':>8}{'ort f32 ms':>12}{'ort int8 ms':>13}{'verity ms':>11}"
          f"{'vs f32':>8}{'vs int8':>9}{'vty/onnx':>10}{'max rel err':>13}{'top1/cos':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['model']:<14} compile failed: {r['error']}")
            continue
        acc = r["verity_acc"]
        q = acc.get("top1", acc.get("min_cosine"))
        for th in threads:
            t = r[f"t{th}"]
            print(f"{r['model']:<14}{th:>8}{t['ort_f32']:>12.2f}{t.get('ort_int8', float('nan')):>13.2f}"
                  f"{t['verity']:>11.2f}{t['ratio_f32']:>7.2f}x{t.get('ratio_int8', float('nan')):>8.2f}x"
                  f"{r['vty_over_onnx']:>10.2f}{acc['max_rel_err']:>13.2e}{q:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
