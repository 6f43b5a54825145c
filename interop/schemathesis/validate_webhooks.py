"""Checks webhook bodies against the `webhooks` of wagate's OpenAPI document.

    python3 validate_webhooks.py <openapi.json> <bodies.jsonl> [<docs/webhooks.md> ...]

`bodies.jsonl` holds one native webhook body per line, as a receiver got them; each
markdown file's ```json blocks that are whole envelopes (they have `event` and `v`) are
checked too, so the examples in the docs cannot drift from what wagate sends. Prints one
line per body that does not match, and what was checked; exits 1 when any does not match
or when nothing was checked. Uses jsonschema_rs (installed with schemathesis).
"""

import json
import re
import sys

import jsonschema_rs


def validators(document):
    """event name -> a validator of its body, resolving refs inside the document."""
    found = {}
    for event, item in document.get("webhooks", {}).items():
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": document["components"]}
        root.update(schema)
        found[event] = jsonschema_rs.validator_for(root)
    return found


def doc_examples(path):
    """(where, body) of each whole envelope in a markdown file's ```json blocks."""
    text = open(path, encoding="utf-8").read()
    for match in re.finditer(r"```json\n(.*?)```", text, re.S):
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError as e:
            yield f"{path}:{text[: match.start()].count(chr(10)) + 1}", {"unparsable": str(e)}
            continue
        if isinstance(body, dict) and "event" in body and "v" in body:
            yield f"{path}:{text[: match.start()].count(chr(10)) + 1}", body


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    document = json.load(open(argv[1], encoding="utf-8"))
    checks = validators(document)
    bodies = []
    for number, line in enumerate(open(argv[2], encoding="utf-8"), 1):
        if line.strip():
            bodies.append((f"{argv[2]}:{number}", json.loads(line)))
    for path in argv[3:]:
        bodies.extend(doc_examples(path))
    failures, seen = 0, {}
    for where, body in bodies:
        event = body.get("event") if isinstance(body, dict) else None
        check = checks.get(event)
        if check is None:
            print(f"{where}: no schema for the event {event!r}")
            failures += 1
            continue
        errors = [f"{'/'.join(map(str, e.instance_path)) or '(body)'}: {e.message}" for e in check.iter_errors(body)]
        if errors:
            print(f"{where}: {event} does not match its schema: {'; '.join(errors[:5])}")
            failures += 1
        seen[event] = seen.get(event, 0) + 1
    print(f"checked {len(bodies)} bodies: {json.dumps(seen, sort_keys=True)}; {failures} did not match")
    return 1 if failures or not bodies else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
