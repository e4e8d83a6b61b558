#!/usr/bin/env python3
"""The compiled ABI and bytecode the Rust side uses, committed under contracts/artifacts/, and a check
that they match the sources (run after `forge build`/`forge test`, which write contracts/out/).

    python scripts/contract_artifacts.py --write    # refresh after changing a contract
    python scripts/contract_artifacts.py --check    # exit 1 if a committed artifact is stale
"""
import argparse
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# contract name -> the source file (under contracts/src) that defines it
CONTRACTS = {
    "ReceiptCourt": "ReceiptCourt.sol",
    "OptimisticFactory": "VerityDeployer.sol",
    "ModelRegistry": "ModelRegistry.sol",
    "NodeRegistry": "NodeRegistry.sol",
    "InferenceHub": "InferenceHub.sol",
    "VerityDeployer": "VerityDeployer.sol",
    "OpenGradientInference": "OpenGradient.sol",
    "OpenGradientEvents": "OpenGradient.sol",
    "OneStep": "OneStep.sol",
    "OptimisticHub": "OptimisticHub.sol",
}


def artifact(name):
    with open(os.path.join(ROOT, "contracts", "out", CONTRACTS[name], f"{name}.json")) as f:
        out = json.load(f)
    doc = {"contract": name, "abi": out["abi"], "bytecode": out["bytecode"]["object"],
           "deployedBytecode": out["deployedBytecode"]["object"]}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true")
    g.add_argument("--check", action="store_true")
    a = ap.parse_args()
    stale = []
    for name in CONTRACTS:
        path = os.path.join(ROOT, "contracts", "artifacts", f"{name}.json")
        text = artifact(name)
        if a.write:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        else:
            try:
                with open(path) as f:
                    if f.read() != text:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
    if stale:
        print("stale contract artifacts (run scripts/contract_artifacts.py --write): " + ", ".join(stale))
        sys.exit(1)
    print("contract artifacts " + ("written" if a.write else "match the sources"))


if __name__ == "__main__":
    main()
