"""Validate a CycloneDX JSON document with an independent tool, cyclonedx-python-lib.

Usage: validate.py FILE

Three checks:
1. the official JSON schema of the specVersion the document declares (the library's
   JsonStrictValidator: no unknown properties), every error printed with where it is;
2. the library's data model: the document is read into its `Bom` (every purl is parsed) and
   `Bom.validate()` checks that every dependency `ref` and `dependsOn` names a component or
   service of the BOM (the schema cannot: a reference is only a string to it);
3. the one rule of the specification on references neither of them checks: "Every bom-ref
   MUST be unique within the BOM" (components at any depth, services, metadata.component).
Exit status 0 when both pass, 1 when the document is refused, 2 on a usage error.
Runs in the venv tests/setup-host.sh makes (/var/tmp/atlas-test/cdx-venv).
"""

import json
import sys
import warnings

from cyclonedx.model.bom import Bom
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def schema_errors(text, version):
    errors = JsonStrictValidator(version).validate_str(text, all_errors=True)
    out = []
    for e in errors or ():
        err = e.data
        where = "/".join(str(p) for p in err.absolute_path) or "(document)"
        out.append(f"schema {version.to_version()}: at {where}: {err.message}")
    return out


def model_errors(doc):
    # The library's deserializer warns about what it drops; those are not errors of ours to
    # hide, so they are turned into errors too.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            bom = Bom.from_json(doc)
            bom.validate()
        except Exception as e:  # any refusal of the model is a finding
            return [f"model: {type(e).__name__}: {e}"]
    return []


def bom_refs(doc):
    """Every bom-ref of a component or service, nested ones included."""
    def walk(items):
        for item in items or ():
            if isinstance(item, dict):
                if "bom-ref" in item:
                    yield item["bom-ref"]
                yield from walk(item.get("components"))
                yield from walk(item.get("services"))
    meta = doc.get("metadata", {})
    yield from walk([meta["component"]] if "component" in meta else [])
    yield from walk(doc.get("components"))
    yield from walk(doc.get("services"))


def duplicate_refs(doc):
    seen, out = set(), []
    for ref in bom_refs(doc):
        if ref in seen:
            out.append(f"spec: bom-ref {ref!r} is not unique within the BOM")
        seen.add(ref)
    return out


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except ValueError as e:
        print(f"{argv[1]}: not JSON: {e}")
        return 1
    declared = doc.get("specVersion") if isinstance(doc, dict) else None
    try:
        version = SchemaVersion.from_version(str(declared))
    except (ValueError, TypeError):
        print(f"{argv[1]}: specVersion {declared!r} is not one the library has a schema of")
        return 1
    errors = schema_errors(text, version)
    # The model is read only from a document the schema accepts (it assumes the shape).
    if not errors:
        errors = duplicate_refs(doc) + model_errors(doc)
    for e in errors:
        print(f"{argv[1]}: {e}")
    if errors:
        print(f"{argv[1]}: refused: {len(errors)} error(s) (CycloneDX {version.to_version()})")
        return 1
    print(f"{argv[1]}: valid CycloneDX {version.to_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
