"""One screenshot of a web page after it has rendered, through Chromium's DevTools protocol
(headless ``--screenshot`` takes it before TensorBoard's charts have drawn).

    python docs/screenshot.py URL OUT.png [--wait 20] [--size 1500x1100]

Needs ``chromium`` (apt) and ``websocket-client`` (pip); used by ``docs/screenshots.sh``.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import tempfile
import time
import urllib.request

import websocket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to let it render")
    parser.add_argument("--size", default="1500x1100", help="window WIDTHxHEIGHT")
    parser.add_argument("--port", type=int, default=9333)
    args = parser.parse_args()
    width, height = args.size.split("x")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [
                "chromium",
                "--headless=new",
                "--no-sandbox",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--hide-scrollbars",
                f"--window-size={width},{height}",
                f"--remote-debugging-port={args.port}",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            pages = []
            for _ in range(50):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/json") as answer:
                        pages = [p for p in json.load(answer) if p["type"] == "page"]
                    break
                except OSError:
                    time.sleep(0.2)
            socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
            calls = iter(range(1, 1000))

            def call(method: str, **params: object) -> dict:
                ident = next(calls)
                socket.send(json.dumps({"id": ident, "method": method, "params": params}))
                while True:
                    message = json.loads(socket.recv())
                    if message.get("id") == ident:
                        return message.get("result", {})

            call("Page.enable")
            call("Page.navigate", url=args.url)
            time.sleep(args.wait)  # real time: the charts draw after their data arrive
            shot = call("Page.captureScreenshot", format="png")
            with open(args.out, "wb") as handle:
                handle.write(base64.b64decode(shot["data"]))
        finally:
            browser.terminate()
            browser.wait()


if __name__ == "__main__":
    main()
