#!/usr/bin/env python3
"""Renders (and lints) the Sonde chart with Helm's own Go template engine.

`helm` itself is not packaged for Debian; the helm-python-sdk wheel on PyPI bundles libhelm_c,
a C ABI over Helm's official Go SDK (v4), so this renders exactly as `helm template` does.
Installed by `cargo xtask setup --deploy`.

    render.py CHART [-f values.yaml]... [--set-json '{"tls": {"enabled": true}}']...
              [--name sonde] [--namespace sonde] [--out-dir DIR] [--lint]

Prints the manifests as one multi-document YAML stream, or writes one file per template into
--out-dir. --lint also runs Helm's strict chart lint and fails on any finding.
"""

import argparse
import json
import os
import sys

import helm_python


def deep_merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart")
    parser.add_argument("-f", "--values", action="append", default=[])
    parser.add_argument("--set-json", action="append", default=[])
    parser.add_argument("--name", default="sonde")
    parser.add_argument("--namespace", default="sonde")
    parser.add_argument("--out-dir")
    parser.add_argument("--lint", action="store_true")
    args = parser.parse_args()

    values = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            deep_merge(values, helm_python.values_from_yaml(f.read()) or {})
    for text in args.set_json:
        deep_merge(values, json.loads(text))

    if args.lint:
        report = helm_python.lint(args.chart, values, strict=True, namespace=args.namespace)
        problems = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
        problems += [{"error": e} for e in report.get("errors") or []]
        for m in problems:
            print(f"lint: {m.get('path', '')}: {m.get('error')}", file=sys.stderr)
        if problems:
            return 1

    chart = helm_python.Chart.load(args.chart)
    manifests = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    documents = []
    for path in sorted(manifests):
        text = manifests[path].strip()
        if not text or not path.endswith((".yaml", ".yml")):
            continue
        documents.append((path, text))

    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        for path, text in documents:
            target = os.path.join(args.out_dir, os.path.basename(path))
            with open(target, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    else:
        for path, text in documents:
            print(f"---\n# Source: {path}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
