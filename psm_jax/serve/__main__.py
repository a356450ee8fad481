"""``python -m psm_jax.serve``: the interactive inpainting page for a trained workdir or an exported artifact.

    python -m psm_jax.serve --workdir runs/demo              # http://127.0.0.1:8000
    python -m psm_jax.serve --artifact psm.jaxexport --port 8080

Binds 127.0.0.1 unless ``--host`` says otherwise (then it warns: the page has no authentication). ``--port 0``
picks a free port; the URL is printed either way. Bad flags, a missing workdir or artifact and a port that is
taken are one ``error:`` line and exit code 2, before anything is served.
"""
from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import uvicorn

from psm_jax import cli
from psm_jax.serve import forms, model
from psm_jax.serve.app import create_app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (so a taken port is an error here, not inside the server); OSError if impossible."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="python -m psm_jax.serve", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir (or a checkpoints/<step> folder)")
    src.add_argument("--artifact", help="an exported model (python -m psm_jax.export); its .json sidecar beside it")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir (default: latest)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    ap.add_argument("--max_upload_bytes", type=int, default=forms.Limits.max_upload_bytes,
                    help="largest request body accepted (bytes)")
    ap.add_argument("--max_pixels", type=int, default=forms.Limits.max_pixels,
                    help="largest image accepted, width x height")
    ap.add_argument("--max_samples", type=int, default=forms.Limits.max_samples, help="most samples per request")
    ap.add_argument("--max_queue", type=int, default=64, help="requests that may wait; more get 503")
    ap.add_argument("--examples", type=int, default=300, help="held-out images offered on the page (0 = none)")
    ap.add_argument("--no_warmup", action="store_true", help="do not compile the default T at start-up")
    args = ap.parse_args(argv)

    if not 0 <= args.port <= 65535:
        cli.fail(f"--port: expected 0..65535, got {args.port}")
    for flag in ("max_upload_bytes", "max_pixels", "max_samples", "max_queue"):
        if getattr(args, flag) < 1:
            cli.fail(f"--{flag}: expected an integer >= 1, got {getattr(args, flag)}")
    if args.examples < 0:
        cli.fail(f"--examples: expected an integer >= 0, got {args.examples}")
    if args.artifact and args.step is not None:
        cli.fail("--step: only with --workdir (an artifact holds one checkpoint)")
    flag, path = ("--workdir", args.workdir) if args.workdir else ("--artifact", args.artifact)
    if not Path(path).exists():
        cli.fail(f"{flag} {path}: does not exist")
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        cli.fail(f"--host {args.host} --port {args.port}: cannot listen ({e.strerror or e})")
    try:
        backend = (model.from_workdir(args.workdir, args.step) if args.workdir else model.from_artifact(args.artifact))
    except cli.INPUT_ERRORS as e:
        sock.close()
        cli.fail(f"{flag} {e}")
    limits = forms.Limits(args.max_upload_bytes, args.max_pixels, args.max_samples)
    app = create_app(backend, limits=limits, max_queue=args.max_queue, examples=args.examples,
                     warmup=not args.no_warmup)
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host}: the page is reachable from other machines; it has no "
              "authentication and runs every request on this machine", file=sys.stderr, flush=True)
    step = f", step {backend.inpainter.step}" if backend.inpainter.step is not None else ""
    print(f"Serving {backend.name} ({backend.kind}{step}, {backend.resolution}px, T = {backend.default_iters}) "
          f"at {url_of(sock)}  (Ctrl-C stops)", flush=True)
    # uvicorn's own cap on open connections answers 503 before the app's queue does, for floods.
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, server_header=False,
                            limit_concurrency=2 * args.max_queue + 16)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:   # uvicorn shuts down gracefully, then re-raises the Ctrl-C it caught
        pass
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
