#!/usr/bin/env python3
"""A minimal non-Go agent for aisecops-envoy, Python 3 standard library only.

It does what every governed agent does before a tool call:

1. proves who it is to the token service with a workload credential (in
   Kubernetes, its projected service-account token; on a laptop, one minted by
   `aisecops token --workload --agent demo-agent`) and asks for a short-lived
   capability token for one tool: POST /v1/tokens;
2. calls the tool through Envoy's egress listener with
   `Authorization: Bearer <capability token>`, `x-aisecops-run-id` and its
   execution plan as the JSON body;
3. prints the decision as one JSON line.

Exit status: 0 allowed, 2 refused (no token, denied, or approval required),
1 any other failure. The capability token and the workload credential are
never printed.

Example (the README's tour):

    export AISECOPS_WORKLOAD_TOKEN=$(aisecops token --workload --agent demo-agent)
    python3 examples/python/agent.py \\
        --token-service http://127.0.0.1:8181 --egress http://127.0.0.1:10000 \\
        --tool db.read --host db.internal --path /query \\
        --run-id run-42 --arguments '{"table": "customers", "limit": 10}'
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

# Kubernetes mounts a projected service-account token here when the pod spec
# asks for one with audience aisecops-token-service.
DEFAULT_TOKEN_FILE = "/var/run/secrets/tokens/aisecops"


def workload_credential(args):
    """The workload credential: --workload-token-file, else the environment,
    else the projected token file."""
    if args.workload_token_file:
        with open(args.workload_token_file, encoding="ascii") as f:
            return f.read().strip()
    env = os.environ.get("AISECOPS_WORKLOAD_TOKEN", "").strip()
    if env:
        return env
    with open(DEFAULT_TOKEN_FILE, encoding="ascii") as f:
        return f.read().strip()


def post_json(url, body, headers, timeout):
    """POST body as JSON; return (status, headers, parsed JSON body or None).
    HTTP error statuses are answers, not exceptions."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, _json(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, _json(e.read())


def _json(raw):
    try:
        return json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None


def request_token(args, credential):
    body = {"tool": args.tool, "run_id": args.run_id, "ttl": args.ttl}
    if args.scope:
        body["scope"] = args.scope
    if args.max_rows is not None:
        body["constraints"] = {"max_rows": args.max_rows}
    status, _, doc = post_json(
        args.token_service.rstrip("/") + "/v1/tokens",
        body,
        {"Authorization": "Bearer " + credential},
        args.timeout,
    )
    return status, doc or {}


def call_tool(args, token):
    plan = {
        "agent_id": args.agent_id,
        "tool": args.tool,
        "arguments": json.loads(args.arguments),
    }
    if not plan["agent_id"]:
        del plan["agent_id"]
    headers = {"Authorization": "Bearer " + token, "x-aisecops-run-id": args.run_id}
    if args.host:
        # Envoy routes on the tool's host; urllib keeps an explicit Host header.
        headers["Host"] = args.host
    status, resp_headers, doc = post_json(
        args.egress.rstrip("/") + args.path, plan, headers, args.timeout
    )
    return status, resp_headers, doc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--token-service", required=True, help="aisecops HTTP API, e.g. http://127.0.0.1:8181")
    p.add_argument("--egress", required=True, help="Envoy egress listener, e.g. http://127.0.0.1:10000")
    p.add_argument("--workload-token-file", help="file holding the workload credential")
    p.add_argument("--tool", required=True)
    p.add_argument("--host", help="the tool's host as Envoy routes it (Host header)")
    p.add_argument("--path", default="/")
    p.add_argument("--run-id", required=True)
    p.add_argument("--arguments", default="{}", help="the plan's arguments as a JSON object")
    p.add_argument("--agent-id", default="", help="agent_id in the plan (must match the token's)")
    p.add_argument("--scope", default="")
    p.add_argument("--max-rows", type=int)
    p.add_argument("--ttl", default="5m")
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)

    try:
        credential = workload_credential(args)
        status, doc = request_token(args, credential)
        if status != 201:
            print(json.dumps({"step": "token", "status": status,
                              "decision": doc.get("decision", "deny"),
                              "reasons": doc.get("reasons", [])}))
            return 2
        status, headers, body = call_tool(args, doc["token"])
    except (OSError, ValueError, KeyError) as e:
        # OSError covers connection failures and urllib.error.URLError.
        print(json.dumps({"step": "error", "error": type(e).__name__ + ": " + str(e)}))
        return 1

    decision = headers.get("x-aisecops-decision") or ("allow" if 200 <= status < 300 else "deny")
    out = {"step": "call", "status": status, "decision": decision, "jti": doc.get("jti")}
    if isinstance(body, dict):
        for k in ("reasons", "decision_id", "approval_id"):
            if k in body:
                out[k] = body[k]
        if decision == "allow":
            out["result"] = body
    print(json.dumps(out))
    return 0 if decision == "allow" else 2


if __name__ == "__main__":
    sys.exit(main())
