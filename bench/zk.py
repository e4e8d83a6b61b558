#!/usr/bin/env python3
"""Zero-knowledge proving, Verity against EZKL, on the same ONNX models and inputs in one run.

For the MLP and CNN fixtures: one ONNX file is prepared for both systems (the fixture with every default
Conv/pool attribute written out, because EZKL refuses nodes that omit them; the semantics are unchanged).
Verity compiles it (`verity model compile`, the fixture's manifest flags), then `verity prove` and
`verity verify`; EZKL runs gen_settings (input/param scale 13, public input and output, fixed
parameters), compile_circuit, a local gen_srs (never a download), setup, gen_witness, prove and verify.
Each side runs in its own child process so its peak memory (max RSS) is its own. Printed per model:
prove time, verify time, proof size, key sizes, peak memory, the largest error of the output against the
float reference (onnx's reference evaluator on the prepared file), and the EZKL/Verity ratios.

Needs a Python with `ezkl` (PyPI 23.0.5 was measured), `onnx` and `numpy`, and a release build of Verity:

    python -m venv /tmp/ezv && /tmp/ezv/bin/pip install ezkl==23.0.5 onnx numpy
    cargo build --release -p verity-cli && /tmp/ezv/bin/python bench/zk.py
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def child_rss(cmd, timeout=None):
    """Run `cmd` and return (stdout, seconds, max RSS MB) using wait4 on the child; kill it after
    `timeout` seconds."""
    import threading
    t = time.perf_counter()
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=errf)
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer:
            timer.start()
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        if timer:
            timer.cancel()
            if time.perf_counter() - t >= timeout:
                raise RuntimeError(f"{' '.join(cmd[:3])} did not finish within {timeout} s (killed)")
        errf.seek(0)
        err = errf.read()
    secs = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {err.decode()[-1200:]}")
    return out.decode(), secs, ru.ru_maxrss / 1024.0


def explicit_attributes(src, dst):
    import onnx
    from onnx import helper
    m = onnx.load(src)
    for n in m.graph.node:
        if n.op_type not in ("Conv", "MaxPool", "AveragePool"):
            continue
        have = {a.name for a in n.attribute}
        k = None
        for a in n.attribute:
            if a.name == "kernel_shape":
                k = list(a.ints)
        if k is None and n.op_type == "Conv":
            w = next((i for i in m.graph.initializer if i.name == n.input[1]), None)
            k = list(w.dims[2:]) if w is not None else [1, 1]
        rank = len(k) if k else 2
        if "kernel_shape" not in have and k:
            n.attribute.append(helper.make_attribute("kernel_shape", k))
        if "strides" not in have:
            n.attribute.append(helper.make_attribute("strides", [1] * rank))
        if "pads" not in have:
            n.attribute.append(helper.make_attribute("pads", [0] * (2 * rank)))
        if "dilations" not in have and n.op_type != "AveragePool":
            n.attribute.append(helper.make_attribute("dilations", [1] * rank))
        if n.op_type == "Conv" and "group" not in have:
            n.attribute.append(helper.make_attribute("group", 1))
    onnx.save(m, dst)


def undilate(src, dst):
    """EZKL refuses dilated convolutions: the same network with dilation 1 and pads chosen so every
    output keeps its shape (same parameters, same cost class). Returns whether anything changed."""
    import onnx
    from onnx import shape_inference
    m = onnx.load(src)
    inferred = shape_inference.infer_shapes(m)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    changed = False
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        at = {a.name: a for a in n.attribute}
        if list(at["dilations"].ints) == [1, 1]:
            continue
        xin, out = shapes[n.input[0]], shapes[n.output[0]]
        k, st = list(at["kernel_shape"].ints), list(at["strides"].ints)
        pads = []
        for ax in range(2):
            total = max(0, (out[2 + ax] - 1) * st[ax] + k[ax] - xin[2 + ax])
            pads.append((total // 2, total - total // 2))
        del at["dilations"].ints[:]
        at["dilations"].ints.extend([1, 1])
        del at["pads"].ints[:]
        at["pads"].ints.extend([pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
        changed = True
    onnx.save(m, dst)
    return changed


def ezkl_child(model, data, outdir):
    """The EZKL pipeline (runs in its own process); prints a JSON report."""
    import ezkl
    r = {}
    paths = {k: os.path.join(outdir, k) for k in
             ["settings.json", "network.ezkl", "kzg.srs", "vk.key", "pk.key", "witness.json", "proof.json"]}
    args = ezkl.PyRunArgs()
    args.input_scale = 13
    args.param_scale = 13
    args.input_visibility = "public"
    args.output_visibility = "public"
    args.param_visibility = "fixed"
    t = time.perf_counter()
    assert ezkl.gen_settings(model, paths["settings.json"], py_run_args=args)
    assert ezkl.compile_circuit(model, paths["network.ezkl"], paths["settings.json"])
    r["compile_s"] = time.perf_counter() - t
    logrows = json.load(open(paths["settings.json"]))["run_args"]["logrows"]
    r["logrows"] = logrows
    t = time.perf_counter()
    ezkl.gen_srs(paths["kzg.srs"], logrows)
    r["srs_s"] = time.perf_counter() - t
    t = time.perf_counter()
    assert ezkl.setup(paths["network.ezkl"], paths["vk.key"], paths["pk.key"], paths["kzg.srs"])
    r["setup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ezkl.gen_witness(data, paths["network.ezkl"], paths["witness.json"])
    r["witness_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ezkl.prove(paths["witness.json"], paths["network.ezkl"], paths["pk.key"], paths["proof.json"],
               paths["kzg.srs"])
    r["prove_s"] = time.perf_counter() - t
    t = time.perf_counter()
    assert ezkl.verify(paths["proof.json"], paths["settings.json"], paths["vk.key"], paths["kzg.srs"])
    r["verify_s"] = time.perf_counter() - t
    r["proof_bytes"] = os.path.getsize(paths["proof.json"])
    r["pk_bytes"] = os.path.getsize(paths["pk.key"])
    r["vk_bytes"] = os.path.getsize(paths["vk.key"])
    w = json.load(open(paths["witness.json"]))
    outs = w.get("pretty_elements", {}).get("rescaled_outputs")
    if outs is None:
        scale = json.load(open(paths["settings.json"]))["model_output_scales"][0]
        outs = [[ezkl.felt_to_float(x, scale) for x in o] for o in w["outputs"]]
    r["outputs"] = [[float(x) for x in o] for o in outs]
    print(json.dumps(r))


def float_reference(path, inp):
    """The float output of the prepared ONNX file (onnx's reference evaluator)."""
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator
    m = onnx.load(path)
    name = m.graph.input[0].name
    t = list(inp.values())[0] if isinstance(inp, dict) else inp
    x = np.array(t["data"] if isinstance(t, dict) else t, dtype=np.float32)
    if isinstance(t, dict):
        x = x.reshape(t["shape"])
    out = ReferenceEvaluator(m).run(None, {name: x})[0]
    return [float(v) for v in out.reshape(-1)]


def flat(v):
    if isinstance(v, list):
        return [y for x in v for y in flat(x)]
    return [v]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", default=os.path.join(ROOT, "target", "release", "verity"))
    ap.add_argument("--models", default="mlp,cnn",
                    help="comma-separated fixtures (digits also works for Verity; EZKL 23.0.5 hangs on it here)")
    ap.add_argument("--ezkl-timeout", type=float, default=1200,
                    help="seconds before an EZKL pipeline is killed and reported as failed")
    ap.add_argument("--ezkl-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ezkl_child:
        ezkl_child(*a.ezkl_child)
        return
    manifest = json.load(open(os.path.join(ROOT, "fixtures", "manifest.json")))
    rows = []
    for name in a.models.split(","):
        tmp = tempfile.mkdtemp(prefix=f"zkbench-{name}-")
        onnx_path = os.path.join(tmp, f"{name}.onnx")
        explicit_attributes(os.path.join(ROOT, "fixtures", f"{name}.onnx"), onnx_path)
        if undilate(onnx_path, onnx_path):
            print(f"{name}: EZKL does not take dilated convolutions; both systems prove the same network "
                  "with dilation 1 (pads chosen to keep every shape)")
        inp = json.load(open(os.path.join(ROOT, "fixtures", f"{name}.input.json")))
        ref = float_reference(onnx_path, inp)
        # Verity
        vty = os.path.join(tmp, f"{name}.vty")
        subprocess.run([a.verity, "model", "compile", onnx_path, "-o", vty] + manifest[name]["flags"],
                       cwd=ROOT, check=True, capture_output=True)
        in_path = os.path.join(ROOT, "fixtures", f"{name}.input.json")
        proof = os.path.join(tmp, "proof.bin")
        out, prove_wall, prove_rss = child_rss([a.verity, "prove", vty, "--input", in_path, "-o", proof])
        pv = json.loads(out)
        out, verify_wall, verify_rss = child_rss(
            [a.verity, "verify", proof, "--model", vty, "--weights-root", pv["weights_root"]])
        vv = json.loads(out)
        v_out = flat(list(pv["outputs"].values())[0]["data"])
        verity = {
            "keygen_s": pv["keygen_ms"] / 1e3, "prove_s": pv["prove_ms"] / 1e3,
            "verify_s": vv["verify_ms"] / 1e3, "proof_bytes": pv["proof_bytes"],
            "pk_bytes": pv["proving_key_bytes"], "vk_bytes": 64 + os.path.getsize(vty),
            "prove_rss_mb": prove_rss,
            "err": max(abs(x - y) for x, y in zip(v_out, ref)),
        }
        # EZKL
        data_path = os.path.join(tmp, "input.json")
        x = flat(list(inp.values())[0]["data"]) if isinstance(inp, dict) else flat(inp)
        json.dump({"input_data": [x]}, open(data_path, "w"))
        try:
            out, ez_wall, ez_rss = child_rss([sys.executable, os.path.abspath(__file__), "--ezkl-child",
                                              onnx_path, data_path, tmp], timeout=a.ezkl_timeout)
            ez = json.loads(out.strip().splitlines()[-1])
            ez["err"] = max(abs(x - y) for x, y in zip(flat(ez["outputs"]), ref))
            ez["rss_mb"] = ez_rss
        except RuntimeError as e:
            lines = [x for x in str(e).strip().splitlines() if x.strip()]
            print(f"{name}: EZKL failed: {(lines[-1] if lines else 'no message')[:300]}")
            ez = None
        rows.append((name, verity, ez))
    print()
    print(f"{'model':6} {'system':7} {'setup s':>8} {'prove s':>8} {'verify ms':>10} {'proof kB':>9} "
          f"{'pk MB':>8} {'vk kB':>8} {'peak MB':>8} {'max |err|':>10}")
    for name, v, e in rows:
        if e is None:
            print(f"{name:6} {'EZKL':7} (failed, see above)")
            print(f"{'':6} {'Verity':7} {v['keygen_s']:8.2f} {v['prove_s']:8.2f} {v['verify_s'] * 1e3:10.1f} "
                  f"{v['proof_bytes'] / 1e3:9.1f} {v['pk_bytes'] / 1e6:8.1f} {v['vk_bytes'] / 1e3:8.1f} "
                  f"{v['prove_rss_mb']:8.0f} {v['err']:10.2e}")
            continue
        print(f"{name:6} {'EZKL':7} {e['setup_s'] + e['srs_s']:8.2f} {e['prove_s']:8.2f} "
              f"{e['verify_s'] * 1e3:10.1f} {e['proof_bytes'] / 1e3:9.1f} {e['pk_bytes'] / 1e6:8.1f} "
              f"{e['vk_bytes'] / 1e3:8.1f} {e['rss_mb']:8.0f} {e['err']:10.2e}")
        print(f"{'':6} {'Verity':7} {v['keygen_s']:8.2f} {v['prove_s']:8.2f} {v['verify_s'] * 1e3:10.1f} "
              f"{v['proof_bytes'] / 1e3:9.1f} {v['pk_bytes'] / 1e6:8.1f} {v['vk_bytes'] / 1e3:8.1f} "
              f"{v['prove_rss_mb']:8.0f} {v['err']:10.2e}")
        print(f"{'':6} {'ratio':7} {'':8} {e['prove_s'] / v['prove_s']:7.1f}x "
              f"{e['verify_s'] / v['verify_s']:9.1f}x {e['proof_bytes'] / v['proof_bytes']:8.2f}x")
    print("\n(EZKL setup includes its local gen_srs; EZKL proof size is its JSON file; Verity's verifying "
          "data is the .vty model plus a 64-byte key; peak MB is the prover's max RSS)")
    json.dump([{"model": n, "verity": v, "ezkl": e} for n, v, e in rows],
              open(os.path.join(tempfile.gettempdir(), "zk_bench.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
