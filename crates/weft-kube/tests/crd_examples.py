"""Checks weft.dev objects against the schemas of `weft install --crds`.

usage: crd_examples.py CRDS.yaml [--invalid] FILE...

FILEs are YAML files or Markdown (their ```yaml blocks are read); every
document with a weft.dev apiVersion is validated against the
openAPIV3Schema of its CRD, as the API server does with strict field
validation (kubectl's default): wrong types, missing required fields and
unknown fields are errors. Files after --invalid must each hold at least one
object that fails. Exit status 0 when every expectation holds.
"""

import re
import sys

import jsonschema
import yaml


def documents(path):
    text = open(path, encoding="utf-8").read()
    if path.endswith(".md"):
        text = "\n---\n".join(re.findall(r"```ya?ml\n(.*?)```", text, re.S))
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def strict(schema):
    """Unknown fields are errors, except where the schema keeps them."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema = dict(schema, additionalProperties=False)
        return {k: strict(v) if k != "metadata" else v for k, v in schema.items()}
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def main(argv):
    crds, files = argv[0], argv[1:]
    schemas = {}
    for crd in documents(crds):
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    invalid, failed, checked = False, 0, 0
    for path in files:
        if path == "--invalid":
            invalid = True
            continue
        errors = []
        for doc in documents(path):
            if not str(doc.get("apiVersion", "")).startswith("weft.dev/"):
                continue
            key = (doc["apiVersion"], doc.get("kind"))
            name = f"{path}: {key[1]} {doc.get('metadata', {}).get('name')}"
            if key not in schemas:
                errors.append(f"{name}: no CRD for {key}")
                continue
            checked += 1
            for e in jsonschema.Draft4Validator(schemas[key]).iter_errors(doc):
                errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        if invalid and not errors:
            print(f"{path}: expected a refusal, every object was accepted")
            failed += 1
        elif not invalid and errors:
            print("\n".join(errors))
            failed += 1
        elif invalid:
            print("refused as expected:", errors[0])
    print(f"{checked} weft.dev objects checked, {failed} files not as expected")
    return 1 if failed or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
