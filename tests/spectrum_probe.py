"""ddp_probe.py, spectrum mode, with the SpectrumMonitor under the protocol SPECTRUM_PROTOCOL names.

An environment variable rather than an option, because Lightning's DDP launcher starts the other
ranks by re-running this file with the same arguments and environment.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.spectrum_monitor import SpectrumMonitor
from tests import ddp_probe

if __name__ == "__main__":
    protocol = os.environ["SPECTRUM_PROTOCOL"]
    ddp_probe.SpectrumMonitor = functools.partial(SpectrumMonitor, protocol=protocol)
    ddp_probe.main()
