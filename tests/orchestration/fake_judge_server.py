"""A stand-in for vLLM's OpenAI server in the judge-server tests (not a test module).

Takes the same flags (only --port and --served-model-name matter), requires
`Authorization: Bearer $VLLM_API_KEY` on /v1 as vLLM does, lists the served
model at /v1/models and answers every chat completion with "Score: 7".
`--fail` exits at once with status 3 after a line of log; `--hang` never listens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="judge")
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--hang", action="store_true")
    args, _ = parser.parse_known_args()
    print(f"fake judge server pid {os.getpid()} starting", flush=True)
    if args.fail:
        print("fake judge server: cannot load the model", flush=True)
        sys.exit(3)
    if args.hang:
        time.sleep(3600)
    key = os.environ.get("VLLM_API_KEY")

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _allowed(self) -> bool:
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                self._reply(401, {"error": "Unauthorized"})
                return False
            return True

        def do_GET(self):  # noqa: N802 (http.server naming)
            if self._allowed():
                self._reply(200, {"object": "list", "data": [{"id": args.served_model_name, "object": "model"}]})

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            if self._allowed():
                self._reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Score: 7"}}]})

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
