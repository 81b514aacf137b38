"""Run an API-format workflow on ComfyUI without the browser.

    python -m <repo_dir> run WORKFLOW.json [--server HOST:PORT] [--image ref.png]...
        [--prompt TEXT] [--set NODE.INPUT=VALUE]... [--out DIR] [--timeout S]

If nothing answers at --server, a local ComfyUI is started from $COMFYUI_PATH (else the
ComfyUI this package is installed in, else ~/ComfyUI) and stopped again at the end.
Progress goes to stderr as plain log lines; saved output paths go to stdout, one per line.

Exit codes:
  0  success, outputs downloaded
  1  unexpected failure (upload/history/download HTTP error, lost connection)
  2  bad usage or workflow (unreadable, UI format, --image/--prompt/--set do not fit)
  3  ComfyUI rejected the prompt (validation errors, printed per node)
  4  execution error in a node (exception, node and traceback tail printed)
  5  execution interrupted
  6  timeout (--timeout) - the prompt is removed from the queue / interrupted
  7  no server reachable and none could be started (see COMFYUI_PATH)
"""
import argparse
import asyncio
import logging
import shlex
import signal
import sys
import uuid
from pathlib import Path

import aiohttp

from . import server as comfy_server
from . import evaluate
from . import train as train_command
from .client import (EXIT_FAILURE, EXIT_NO_SERVER, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE,
                     RunError, cancel_prompt, download_outputs, fetch_history, submit, upload_images, watch)
from .workflow import (WorkflowError, apply_images, apply_prompt, apply_set, check_image_count,
                       describe, load_workflow)

log = logging.getLogger("partid.cli")


def build_parser() -> argparse.ArgumentParser:
    pkg = (__package__ or "cli").rpartition(".")[0] or "<repo_dir>"
    parser = argparse.ArgumentParser(prog=f"python -m {pkg}", description=__doc__.split("\n")[0],
                                     epilog=__doc__[__doc__.index("Exit codes:"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an API-format workflow", epilog=parser.epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("workflow", help="workflow JSON exported with 'Save (API)'")
    run.add_argument("--server", default="127.0.0.1:8188", help="HOST:PORT (default %(default)s)")
    run.add_argument("--image", action="append", default=[], metavar="PATH",
                     help="upload and use in LoadImage nodes (repeat: one per node, ascending id)")
    run.add_argument("--prompt", help="text for the positive prompt node(s)")
    run.add_argument("--set", action="append", default=[], dest="sets", metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE = id or title, VALUE parsed as JSON if possible")
    run.add_argument("--out", default="partid_out", help="download folder (default %(default)s)")
    run.add_argument("--timeout", type=float, default=3600.0,
                     help="seconds for upload+execution+download (default %(default)s)")
    run.add_argument("--start-timeout", type=float, default=300.0,
                     help="seconds to wait for a self-started ComfyUI (default %(default)s)")
    run.add_argument("--no-start", action="store_true", help="never start a local ComfyUI")
    run.add_argument("--server-args", default="", metavar="ARGS",
                     help="extra arguments (one quoted string) for a self-started ComfyUI")
    evaluate.add_parser(sub)
    train_command.add_subcommand(sub)
    return parser


def parse_server(text: str):
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise RunError(EXIT_USAGE, f"--server {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_on_server(args, workflow: dict, base: str) -> int:
    client_id = str(uuid.uuid4())
    prompt_id = None
    finished = False

    async def steps(session):
        try:
            return await _steps(session)
        except asyncio.TimeoutError as e:  # an HTTP-level timeout, not --timeout (that cancels us)
            raise RunError(EXIT_FAILURE, f"ComfyUI stopped answering: {e!r}") from None

    async def _steps(session):
        nonlocal prompt_id, finished
        apply_images(workflow, await upload_images(session, base, args.image))
        # Connect first: events for a fast prompt are sent before POST /prompt even returns.
        async with session.ws_connect(f"{base}/ws?clientId={client_id}", max_msg_size=0) as ws:
            prompt_id = await submit(session, base, workflow, client_id)
            log.info("queued prompt %s", prompt_id)
            await watch(ws, prompt_id, workflow)
            finished = True  # nothing left to cancel if the download times out
        entry = await fetch_history(session, base, prompt_id, workflow)
        return await download_outputs(session, base, entry, Path(args.out))

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # clean up like on Ctrl-C
    except (NotImplementedError, RuntimeError):
        pass  # Windows
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=15)) as session:
        try:
            saved = await asyncio.wait_for(steps(session), args.timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            if prompt_id and not finished:
                await cancel_prompt(session, base, prompt_id)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise RunError(EXIT_TIMEOUT, f"timed out after {args.timeout:g}s") from None
    for path in saved:
        print(path, flush=True)
    if not saved:
        log.warning("the workflow produced no output files")
    log.info("saved %d file(s) to %s", len(saved), args.out)
    return EXIT_OK


def ensure_server(args, host: str, port: int):
    """None if a server answers, else a started ComfyServer (caller stops it)."""
    if comfy_server.server_answers(host, port):
        return None
    where = f"{host}:{port}"
    if args.no_start:
        raise RunError(EXIT_NO_SERVER, f"no ComfyUI server answers at {where} (--no-start given)")
    path = comfy_server.find_comfyui()
    if path is None:
        raise RunError(EXIT_NO_SERVER, f"no ComfyUI server answers at {where} and no ComfyUI checkout was "
                       "found to start one: set COMFYUI_PATH=/path/to/ComfyUI (checked $COMFYUI_PATH, "
                       "the folder this package is installed in, ~/ComfyUI)")
    log.info("no server at %s, starting ComfyUI from %s", where, path)
    extra = comfy_server.default_launch_args() + shlex.split(args.server_args)
    srv = comfy_server.ComfyServer(path, host, port, extra)
    try:
        srv.start()
        srv.wait_ready(args.start_timeout)
    except BaseException as e:  # incl. Ctrl-C while waiting: never leave the child running
        srv.stop()
        if isinstance(e, (comfy_server.ServerError, OSError)):
            raise RunError(EXIT_NO_SERVER, f"could not start ComfyUI from {path} (COMFYUI_PATH): {e}") from None
        raise
    return srv


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        return evaluate.main(args)
    if args.command == "train":
        return train_command.main(args)
    started = []  # the ComfyUI this run launched, if any
    try:
        code = run(args, started)
    finally:
        for srv in started:
            log.info("stopping the ComfyUI started for this run")
            srv.stop()
    for srv in started:  # keep the server log only when it may explain a failure
        if code == EXIT_OK:
            Path(srv.log_path).unlink(missing_ok=True)
        else:
            log.info("ComfyUI log: %s", srv.log_path)
    return code


def run(args, started: list) -> int:
    try:
        host, port = parse_server(args.server)
        workflow = load_workflow(args.workflow)
        check_image_count(workflow, len(args.image))
        for path in args.image:
            if not Path(path).is_file():
                raise RunError(EXIT_USAGE, f"--image {path}: no such file")
        if args.prompt is not None:
            for nid, key in apply_prompt(workflow, args.prompt):
                log.info("prompt -> node %s input %s", describe(workflow, nid), key)
        for spec in args.sets:
            nid, key, value = apply_set(workflow, spec)
            log.info("set node %s input %s = %r", describe(workflow, nid), key, value)
        srv = ensure_server(args, host, port)
        if srv is not None:
            started.append(srv)
        base = f"http://{comfy_server.url_host(host)}:{port}"
        return asyncio.run(run_on_server(args, workflow, base))
    except WorkflowError as e:
        log.error("%s", e)
        return EXIT_USAGE
    except RunError as e:
        log.error("%s", e)
        return e.code
    except aiohttp.ClientError as e:
        log.error("connection to ComfyUI failed: %s", e)
        return EXIT_FAILURE
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.error("stopped by signal")
        return 130
