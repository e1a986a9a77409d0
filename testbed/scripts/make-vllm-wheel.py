#!/usr/bin/env python3
"""Writes a stand-in `vllm` wheel: a pure-python distribution named `vllm` whose `vllm` command fakes
the parts of vLLM that rbee uses, so a wheelhouse install and a vLLM worker can be tested without a GPU.

    make-vllm-wheel.py OUT_DIR [--version 0.0.1]     # writes OUT_DIR/vllm-<version>-py3-none-any.whl

Standard library only. The wheel is deterministic (fixed timestamps, sorted entries), so the same
version gives the same sha256. Once installed (`pip install --no-index --find-links OUT_DIR vllm`):

    vllm --version                                    # prints the version
    vllm serve MODEL --host H --port P [args...]      # unknown args are accepted and ignored

`serve` answers GET /health (200), GET /v1/models, and POST /v1/chat/completions and /v1/completions
with a minimal OpenAI-style JSON body, or with server-sent events ending in `data: [DONE]` when the
request has "stream": true. `import vllm; vllm.__version__` and importlib.metadata also give the version.
"""

import argparse
import base64
import hashlib
import os
import re
import sys
import zipfile

STANDIN = r'''"""A stand-in for vLLM's OpenAI-compatible server, written by rbee's testbed/scripts/make-vllm-wheel.py."""

import argparse
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__version__ = "@VERSION@"

REPLY = "Hello from the vLLM stand-in."


def _words(max_tokens):
    words = REPLY.split(" ")
    if isinstance(max_tokens, int) and max_tokens > 0:
        words = words[:max_tokens]
    return words


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vllm-standin/" + __version__
    model = "model"

    def log_message(self, fmt, *args):
        sys.stderr.write("vllm-standin: %s - %s\n" % (self.address_string(), fmt % args))

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/version":
            self._json(200, {"version": __version__})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm"}]})
        else:
            self._json(404, {"error": {"message": "not found: " + path, "type": "NotFoundError", "code": 404}})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            req = json.loads(raw or b"{}")
            if not isinstance(req, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as e:
            self._json(400, {"error": {"message": "invalid JSON: %s" % e, "type": "BadRequestError", "code": 400}})
            return
        if path == "/v1/chat/completions":
            chat = True
        elif path == "/v1/completions":
            chat = False
        else:
            self._json(404, {"error": {"message": "not found: " + path, "type": "NotFoundError", "code": 404}})
            return
        words = _words(req.get("max_tokens"))
        finish = "length" if len(words) < len(REPLY.split(" ")) else "stop"
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        model = req.get("model") or self.model
        if chat:
            prompt = " ".join(str(m.get("content", "")) for m in req.get("messages") or [] if isinstance(m, dict))
        else:
            prompt = str(req.get("prompt", ""))
        n_prompt = len(prompt.split())
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(words), "total_tokens": n_prompt + len(words)}
        if req.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            for i, piece in enumerate(pieces + [None]):
                last = piece is None
                if chat:
                    delta = {} if last else ({"role": "assistant", "content": piece} if i == 0 else {"content": piece})
                    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish if last else None}
                    obj = "chat.completion.chunk"
                else:
                    choice = {"index": 0, "text": "" if last else piece, "logprobs": None,
                              "finish_reason": finish if last else None}
                    obj = "text_completion"
                chunk = {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            return
        text = " ".join(words)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        self._json(200, {"id": ident, "object": obj, "created": created, "model": model,
                         "choices": [choice], "usage": usage})


def serve(argv):
    parser = argparse.ArgumentParser(prog="vllm serve", description="a stand-in for vllm serve")
    parser.add_argument("model")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    args, ignored = parser.parse_known_args(argv)
    _Handler.model = args.served_model_name[0] if args.served_model_name else args.model
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    server.daemon_threads = True
    if ignored:
        sys.stderr.write("vllm-standin: ignoring %s\n" % " ".join(ignored))
    sys.stderr.write("vllm-standin %s: serving %s on http://%s:%d\n" % (__version__, _Handler.model, args.host, args.port))
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vllm --version | vllm serve MODEL [--host H] [--port P] [...]")
        return 0 if argv else 2
    if argv[0] in ("--version", "-v", "version"):
        print(__version__)
        return 0
    if argv[0] == "serve":
        return serve(argv[1:])
    sys.stderr.write("vllm (stand-in): unsupported command %r\n" % argv[0])
    return 2


if __name__ == "__main__":
    sys.exit(main())
'''

PACKAGE_INIT = '''"""The `vllm` stand-in package (see vllm_standin)."""

from vllm_standin import __version__, main

__all__ = ["__version__", "main"]
'''

PACKAGE_MAIN = '''import sys

from vllm_standin import main

sys.exit(main())
'''

# A fixed timestamp (the earliest a zip can hold) keeps the wheel's bytes reproducible.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="the directory to write the wheel into (created if missing)")
    parser.add_argument("--version", default="0.0.1", help="the distribution version (default 0.0.1)")
    args = parser.parse_args()
    version = args.version
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?", version):
        sys.exit(f"make-vllm-wheel: {version!r} is not a plain PEP 440 version (e.g. 0.0.1)")

    dist_info = f"vllm-{version}.dist-info"
    files = {
        "vllm_standin.py": STANDIN.replace("@VERSION@", version),
        "vllm/__init__.py": PACKAGE_INIT,
        "vllm/__main__.py": PACKAGE_MAIN,
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            "Name: vllm\n"
            f"Version: {version}\n"
            "Summary: A stand-in for vLLM's OpenAI-compatible server, for testing rbee without a GPU\n"
            "License: MIT OR Apache-2.0\n"
            "Requires-Python: >=3.8\n"
        ),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\n"
            "Generator: rbee make-vllm-wheel.py\n"
            "Root-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": "[console_scripts]\nvllm = vllm_standin:main\n",
        f"{dist_info}/top_level.txt": "vllm\nvllm_standin\n",
    }
    encoded = {name: text.encode() for name, text in files.items()}
    record_name = f"{dist_info}/RECORD"
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in sorted(encoded.items()))
    record += f"{record_name},,\n"
    encoded[record_name] = record.encode()

    os.makedirs(args.out_dir, exist_ok=True)
    wheel = os.path.join(args.out_dir, f"vllm-{version}-py3-none-any.whl")
    tmp = wheel + ".tmp"
    # dist-info last, RECORD at the very end, as the wheel spec recommends.
    order = sorted(n for n in encoded if not n.startswith(dist_info)) + sorted(
        n for n in encoded if n.startswith(dist_info) and n != record_name) + [record_name]
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in order:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, encoded[name])
    os.replace(tmp, wheel)
    print(wheel)


if __name__ == "__main__":
    main()
