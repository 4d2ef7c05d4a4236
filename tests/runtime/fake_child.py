"""A child for the supervisor's tests: one `fake` service on the real service host (`BourseProcess`,
as `bourse run` runs), with knobs for how it starts and how it ends.

    python tests/runtime/fake_child.py [--banner] [--register-after S|never] [--crash-after S]

`--banner` prints what a child's stdout used to tell the supervisor (it is up) at once, whether
or not its service ever registers. `--crash-after S`: exit 1 S seconds after the service is up
(after the start, with `--register-after never`). The service is not ok while `<data_dir>/sick`
exists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping
from typing import Any

from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from bourse.runtime.service import Service

OLD_BANNER = "Press Ctrl-C to stop."
SICK = "sick"
FAKE_LINK = "http://fake.invalid/"


class Fake(Service):
    name = "fake"
    description = "does nothing, for the supervisor's tests"

    def health(self) -> Mapping[str, Any]:
        return {"pid": os.getpid(), "ok": not (self.ctx.settings.data_dir / SICK).exists()}

    def metrics(self) -> str:
        return f'bourse_fake_up{{pid="{os.getpid()}"}} 1\n'

    def links(self) -> Mapping[str, str]:
        return {"fake": FAKE_LINK}


async def main(banner: bool, register_after: str, crash_after: float | None) -> None:
    if banner:
        print(f"bourse is up: fake\n{OLD_BANNER}", flush=True)

    def crash_later(_process: BourseProcess | None = None) -> None:
        if crash_after is not None:
            asyncio.get_running_loop().call_later(crash_after, os._exit, 1)

    if register_after == "never":
        crash_later()
        await asyncio.Event().wait()
    await asyncio.sleep(float(register_after))
    await BourseProcess(Settings(), [Fake], embedded_nats=False).run(on_ready=crash_later)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--banner", action="store_true")
    parser.add_argument("--register-after", default="0")
    parser.add_argument("--crash-after", type=float, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.banner, args.register_after, args.crash_after))
